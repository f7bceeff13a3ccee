//! Query-parameter parsing with the seed's defaults and ranges. Every failure (missing, not a
//! number, out of range) becomes a 422 whose body names the parameter and its allowed range,
//! so a k6 script or a person sees at once what to change. Also the duration syntax (`300ms`,
//! `2s`) that the fault rules and the link toxics share.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::str::FromStr;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use serde_json::{json, Value};

use crate::error::{AppError, Rule};

/// The request's query string as name → value (the last occurrence wins).
#[derive(Debug, Default)]
pub struct Params(HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map_err(|e| AppError::invalid("query", format!("malformed query string: {e}")))?;
        Ok(Params(pairs.into_iter().collect()))
    }
}

impl Params {
    /// A number within `range`, `default` when absent.
    pub fn num<T>(&self, name: &str, default: T, range: RangeInclusive<T>) -> Result<T, AppError>
    where
        T: FromStr + PartialOrd + Copy + std::fmt::Display,
    {
        match self.0.get(name) {
            None => Ok(default),
            Some(raw) => parse_in_range(name, raw, &range),
        }
    }

    /// A required number within `range`.
    pub fn required_num<T>(&self, name: &str, range: RangeInclusive<T>) -> Result<T, AppError>
    where
        T: FromStr + PartialOrd + Copy + std::fmt::Display,
    {
        match self.0.get(name) {
            None => Err(AppError::InvalidParameter {
                param: name.to_string(),
                detail: format!(
                    "`{name}` is required: a number between {} and {}",
                    range.start(),
                    range.end()
                ),
                range: Some((range.start().to_string(), range.end().to_string())),
                input: None,
                rule: Rule::Missing,
            }),
            Some(raw) => parse_in_range(name, raw, &range),
        }
    }

    /// A string whose length (in characters) is within `len`; `None` when absent and optional.
    pub fn text(&self, name: &str, required: bool, len: RangeInclusive<usize>) -> Result<Option<String>, AppError> {
        match self.0.get(name) {
            None if required => Err(AppError::InvalidParameter {
                param: name.to_string(),
                detail: format!("`{name}` is required ({} to {} characters)", len.start(), len.end()),
                range: Some((len.start().to_string(), len.end().to_string())),
                input: None,
                rule: Rule::Missing,
            }),
            None => Ok(None),
            Some(v) => {
                let n = v.chars().count();
                if v.contains('\0') {
                    // PostgreSQL cannot store NUL in text: refuse it here, the same on every backend.
                    Err(AppError::invalid(
                        name,
                        format!("`{name}` must not contain NUL characters"),
                    ))
                } else if len.contains(&n) {
                    Ok(Some(v.clone()))
                } else {
                    Err(AppError::InvalidParameter {
                        param: name.to_string(),
                        detail: format!(
                            "`{name}` must be {} to {} characters long (got {n})",
                            len.start(),
                            len.end()
                        ),
                        range: Some((len.start().to_string(), len.end().to_string())),
                        input: Some(v.clone()),
                        rule: if n < *len.start() {
                            Rule::TooShort
                        } else {
                            Rule::TooLong
                        },
                    })
                }
            }
        }
    }
}

/// A number the spec can describe: its JSON Schema type and its value.
pub trait Numeric: FromStr + PartialOrd + Copy + std::fmt::Display + Into<Value> {
    const SCHEMA_TYPE: &'static str;
}

impl Numeric for u32 {
    const SCHEMA_TYPE: &'static str = "integer";
}
impl Numeric for u64 {
    const SCHEMA_TYPE: &'static str = "integer";
}
impl Numeric for i64 {
    const SCHEMA_TYPE: &'static str = "integer";
}
impl Numeric for f64 {
    const SCHEMA_TYPE: &'static str = "number";
}

/// What a query parameter is when absent.
pub enum Fallback<T> {
    /// This value.
    Value(T),
    /// The current value of this knob (the handler passes it to `Params::get_or`).
    Knob(&'static str),
    /// Nothing: the parameter is required.
    Required,
}

/// A documented numeric query parameter. One definition serves the handler that parses it and
/// the OpenAPI spec that describes it, so the two cannot drift apart.
pub struct Num<T> {
    pub name: &'static str,
    pub default: Fallback<T>,
    pub min: T,
    pub max: T,
    pub about: &'static str,
}

/// A documented query parameter taking one of a few words; absent means the first.
pub struct Choice {
    pub name: &'static str,
    pub choices: &'static [&'static str],
    pub about: &'static str,
}

/// A documented free-text query parameter with a length range (in characters).
pub struct Text {
    pub name: &'static str,
    pub required: bool,
    pub min_len: usize,
    pub max_len: usize,
    pub about: &'static str,
}

/// What the OpenAPI spec needs of any query parameter.
pub trait QueryParam: Sync {
    fn openapi(&self) -> Value;
}

impl<T: Numeric + Sync> QueryParam for Num<T> {
    fn openapi(&self) -> Value {
        let (min, max): (Value, Value) = (self.min.into(), self.max.into());
        let mut schema = json!({"type": T::SCHEMA_TYPE, "minimum": min, "maximum": max});
        let mut about = self.about.to_string();
        match self.default {
            Fallback::Value(d) => schema["default"] = d.into(),
            Fallback::Knob(knob) => about.push_str(&format!(" (default: the `{knob}` knob)")),
            Fallback::Required => {}
        }
        json!({"name": self.name, "in": "query", "required": matches!(self.default, Fallback::Required),
               "description": about, "schema": schema})
    }
}

impl QueryParam for Choice {
    fn openapi(&self) -> Value {
        json!({"name": self.name, "in": "query", "required": false, "description": self.about,
               "schema": {"type": "string", "enum": self.choices, "default": self.choices[0]}})
    }
}

impl QueryParam for Text {
    fn openapi(&self) -> Value {
        json!({"name": self.name, "in": "query", "required": self.required, "description": self.about,
               "schema": {"type": "string", "minLength": self.min_len, "maxLength": self.max_len}})
    }
}

impl Params {
    /// The documented number `p`: its default when absent, 422 when it is required. (A
    /// parameter whose default is a knob is read with `get_or`; here it is treated as required.)
    pub fn get<T: Numeric>(&self, p: &Num<T>) -> Result<T, AppError> {
        match p.default {
            Fallback::Value(d) => self.num(p.name, d, p.min..=p.max),
            Fallback::Knob(_) | Fallback::Required => self.required_num(p.name, p.min..=p.max),
        }
    }

    /// The documented number `p`, with a default decided at run time (a knob's value).
    pub fn get_or<T: Numeric>(&self, p: &Num<T>, default: T) -> Result<T, AppError> {
        self.num(p.name, default, p.min..=p.max)
    }

    /// The documented choice `c`: the first choice when absent, 422 naming them all otherwise.
    pub fn choice(&self, c: &Choice) -> Result<&'static str, AppError> {
        match self.0.get(c.name) {
            None => Ok(c.choices[0]),
            Some(v) => c.choices.iter().copied().find(|x| x == v).ok_or_else(|| {
                AppError::invalid(
                    c.name,
                    format!("`{}` must be one of {} (got {v:?})", c.name, c.choices.join(", ")),
                )
            }),
        }
    }

    /// The documented text `t`.
    pub fn text_of(&self, t: &Text) -> Result<Option<String>, AppError> {
        self.text(t.name, t.required, t.min_len..=t.max_len)
    }

    /// Whether the query string names `name` at all.
    pub fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// Parses a number as the original lab (FastAPI, pydantic v2) accepts it: an integer parameter
/// also takes a float with no fractional part (`complexity=30.0`, `1e1`).
fn parse_lenient<T: FromStr>(raw: &str) -> Option<T> {
    if let Ok(v) = raw.parse() {
        return Some(v);
    }
    let f: f64 = raw.parse().ok()?;
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{}", f as i64).parse().ok()
    } else {
        None
    }
}

fn parse_in_range<T>(name: &str, raw: &str, range: &RangeInclusive<T>) -> Result<T, AppError>
where
    T: FromStr + PartialOrd + Copy + std::fmt::Display,
{
    let value: T = parse_lenient(raw.trim()).ok_or_else(|| AppError::InvalidParameter {
        param: name.to_string(),
        detail: format!(
            "`{name}` must be a number between {} and {} (got {raw:?})",
            range.start(),
            range.end()
        ),
        range: Some((range.start().to_string(), range.end().to_string())),
        input: Some(raw.to_string()),
        rule: Rule::NotANumber {
            integer: "1.5".parse::<T>().is_err(),
        },
    })?;
    // `contains` is false for NaN, so NaN is refused with the range message too.
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(AppError::out_of_range(name, range.start(), range.end(), raw))
    }
}

/// The longest injected delay, jitter or link toxic: the longest wait the lab demonstrates.
pub const MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(60);

/// A duration as the fault rules and link toxics write it: `300ms`, `2s`, `1.5s`, up to
/// [`MAX_DELAY`].
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let t = text.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    let ms: f64 = num.trim().parse().ok()?;
    let ms = ms * scale;
    (ms.is_finite() && ms >= 0.0 && ms <= MAX_DELAY.as_millis() as f64)
        .then(|| std::time::Duration::from_micros((ms * 1000.0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn default_when_absent_and_range_enforced() {
        let p = params(&[("complexity", "41"), ("delay", "NaN"), ("size", "x")]);
        assert_eq!(p.num("missing", 30u32, 1..=40).unwrap(), 30);
        assert_eq!(p.num("complexity", 30u32, 1..=40).unwrap_err().status().as_u16(), 422);
        assert!(p.num("delay", 5.0f64, 1.0..=30.0).is_err());
        assert!(p.num("size", 1u32, 1..=10).is_err());
        assert!(p.required_num::<u32>("missing", 1..=2).is_err());
    }

    #[test]
    fn text_length_is_checked() {
        let p = params(&[("title", "")]);
        assert!(p.text("title", true, 1..=200).is_err());
        assert!(p.text("description", false, 0..=10).unwrap().is_none());
    }
}
