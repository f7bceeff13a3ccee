// connection-leak — placeholder
