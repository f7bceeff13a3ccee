//! The generator's gRPC side: a unary call with a pre-encoded message over a few lazily
//! opened channels, through a raw-bytes codec (so this crate needs no generated code), and
//! the one table of status-code names the lab and the generator both write.

use std::sync::Arc;

use crate::lab::LabClient;
use crate::plan::Target;

/// Connections a gRPC stage spreads its calls over (each carries many streams).
const CONNECTIONS: usize = 8;

/// Each status code's name as the gRPC specification writes it (`DEADLINE_EXCEEDED`, what
/// clients report) and as grpc-go's Prometheus metrics write it (`DeadlineExceeded`, the
/// `grpc_code` label), indexed by the code's number.
const NAMES: [(&str, &str); 17] = [
    ("OK", "OK"),
    ("CANCELLED", "Canceled"),
    ("UNKNOWN", "Unknown"),
    ("INVALID_ARGUMENT", "InvalidArgument"),
    ("DEADLINE_EXCEEDED", "DeadlineExceeded"),
    ("NOT_FOUND", "NotFound"),
    ("ALREADY_EXISTS", "AlreadyExists"),
    ("PERMISSION_DENIED", "PermissionDenied"),
    ("RESOURCE_EXHAUSTED", "ResourceExhausted"),
    ("FAILED_PRECONDITION", "FailedPrecondition"),
    ("ABORTED", "Aborted"),
    ("OUT_OF_RANGE", "OutOfRange"),
    ("UNIMPLEMENTED", "Unimplemented"),
    ("INTERNAL", "Internal"),
    ("UNAVAILABLE", "Unavailable"),
    ("DATA_LOSS", "DataLoss"),
    ("UNAUTHENTICATED", "Unauthenticated"),
];

fn names(code: tonic::Code) -> (&'static str, &'static str) {
    NAMES.get(code as usize).copied().unwrap_or(("UNKNOWN", "Unknown"))
}

/// A status code as the gRPC specification names it (`DEADLINE_EXCEEDED`).
pub fn code_name(code: tonic::Code) -> &'static str {
    names(code).0
}

/// A status code as grpc-go's metrics write it in `grpc_code` (`DeadlineExceeded`).
pub fn metric_code_name(code: tonic::Code) -> &'static str {
    names(code).1
}

/// Where a stage's gRPC calls go: its channels and the method's path (parsed once), or why
/// there is nowhere to send them.
pub enum Calls {
    Open {
        channels: Arc<Vec<tonic::transport::Channel>>,
        path: tonic::codegen::http::uri::PathAndQuery,
    },
    Unreachable(String),
}

impl Calls {
    /// The stage's gRPC connections, when its target is a gRPC call (opened lazily, on first
    /// use); `None` for an HTTP target.
    pub async fn open(lab: &LabClient, target: &Target) -> Option<Calls> {
        target.grpc.as_ref()?;
        let opened = async {
            let path = tonic::codegen::http::uri::PathAndQuery::try_from(target.path.as_str())
                .map_err(|e| format!("method path {}: {e}", target.path))?;
            let url = lab.grpc_url().await.map_err(|e| e.to_string())?;
            let endpoint = tonic::transport::Endpoint::from_shared(url.clone()).map_err(|e| format!("{url}: {e}"))?;
            let channels = (0..CONNECTIONS).map(|_| endpoint.connect_lazy()).collect();
            Ok::<_, String>(Calls::Open {
                channels: Arc::new(channels),
                path,
            })
        };
        Some(opened.await.unwrap_or_else(Calls::Unreachable))
    }

    /// What the `i`th call of the stage is sent on.
    pub fn for_call(&self, i: u64) -> Call {
        match self {
            Calls::Open { channels, path } => Call::Send(channels[i as usize % channels.len()].clone(), path.clone()),
            Calls::Unreachable(_) => Call::Unreachable,
        }
    }
}

/// One call's channel and method path, or nowhere to send it.
pub enum Call {
    Send(tonic::transport::Channel, tonic::codegen::http::uri::PathAndQuery),
    Unreachable,
}

/// A unary call with the target's pre-encoded message; the failure kind is the status as
/// `gRPC DEADLINE_EXCEEDED` (`connect_error` when there is nowhere to send it).
pub async fn send(call: Call, target: &Target) -> Result<(), String> {
    let (Call::Send(channel, path), Some(grpc_call)) = (call, &target.grpc) else {
        return Err("connect_error".into());
    };
    let mut grpc = tonic::client::Grpc::new(channel);
    let mut req = tonic::Request::new(grpc_call.message.clone());
    req.set_timeout(grpc_call.deadline);
    grpc.ready().await.map_err(|_| "connect_error".to_string())?;
    grpc.unary(req, path, RawCodec)
        .await
        .map(|_| ())
        .map_err(|status| match status.code() {
            tonic::Code::Unavailable if status.message().contains("connect") => "connect_error".to_string(),
            // tonic's client enforces the deadline too, at the instant the server does, and
            // reports its own expiry as CANCELLED "Timeout expired"; gRPC (and grpc-go's,
            // Python's and k6's clients) call that DEADLINE_EXCEEDED.
            tonic::Code::Cancelled if status.message() == tonic::TimeoutExpired(()).to_string() => {
                format!("gRPC {}", code_name(tonic::Code::DeadlineExceeded))
            }
            code => format!("gRPC {}", code_name(code)),
        })
}

/// The generator's gRPC codec: it sends bytes already encoded and reads nothing of the reply
/// but its status, so it needs no generated code.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = bytes::Bytes;
    type Decode = ();
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: bytes::Bytes, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put(dst, item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = ();
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        bytes::Buf::advance(src, n);
        Ok(Some(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_code_has_its_two_names() {
        // The table is indexed by the code's number: a shifted row would name every code after
        // it wrongly. tonic's variant names are the reference.
        for n in 0..17 {
            let code = tonic::Code::from_i32(n);
            let variant = format!("{code:?}");
            let camel: String = code_name(code)
                .split('_')
                .map(|w| w[..1].to_string() + &w[1..].to_lowercase())
                .collect();
            assert_eq!(camel, variant, "code {n}: spec name");
            let metric = match variant.as_str() {
                "Ok" => "OK",
                "Cancelled" => "Canceled",
                v => v,
            };
            assert_eq!(metric_code_name(code), metric, "code {n}: metric name");
        }
        assert_eq!(code_name(tonic::Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
        assert_eq!(metric_code_name(tonic::Code::ResourceExhausted), "ResourceExhausted");
    }
}
