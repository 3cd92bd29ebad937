//! The route table: which color is live, an optional preview route, and the
//! endpoints of each color. Validation names the offending field.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use teal_core::Color;

/// What the router routes by. Installed as a whole with [`crate::Router::swap`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTable {
    /// The color every request goes to unless it matches the preview route.
    pub active: Color,
    /// Requests matching this route go to its color instead.
    #[serde(default)]
    pub preview: Option<PreviewRoute>,
    /// Upstream addresses of each color.
    #[serde(default)]
    pub endpoints: BTreeMap<Color, Vec<SocketAddr>>,
}

/// Sends matching requests to `color`: a request matches when it carries the
/// header (exact name, exact value) or the cookie (exact name, exact value).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviewRoute {
    pub color: Color,
    #[serde(default)]
    pub header: Option<HeaderMatch>,
    #[serde(default)]
    pub cookie: Option<CookieMatch>,
}

/// A request header with an exact value. Header names are case-insensitive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderMatch {
    pub name: String,
    pub value: String,
}

/// A cookie (from the `Cookie` request header) with an exact value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CookieMatch {
    pub name: String,
    pub value: String,
}

/// Why a route table was refused. The message starts with the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("route table is not valid JSON: {0}")]
    Json(String),
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> TableError {
    TableError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

impl RouteTable {
    /// A table sending everything to `active` at `endpoints`.
    pub fn single(active: Color, endpoints: Vec<SocketAddr>) -> RouteTable {
        RouteTable {
            active,
            preview: None,
            endpoints: BTreeMap::from([(active, endpoints)]),
        }
    }

    /// Endpoints of `color` (empty when the table has none).
    pub fn endpoints_of(&self, color: Color) -> &[SocketAddr] {
        self.endpoints.get(&color).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Checks every rule; the error names the first offending field.
    pub fn validate(&self) -> Result<(), TableError> {
        for (color, list) in &self.endpoints {
            for (i, addr) in list.iter().enumerate() {
                let field = format!("endpoints.{color}[{i}]");
                if addr.port() == 0 {
                    return Err(invalid(field, format!("{addr}: port 0 is not allowed")));
                }
                if addr.ip().is_unspecified() {
                    return Err(invalid(
                        field,
                        format!("{addr}: the unspecified address cannot be connected to"),
                    ));
                }
                if let Some(first) = list[..i].iter().position(|a| a == addr) {
                    return Err(invalid(
                        field,
                        format!("duplicate endpoint {addr} (already at index {first})"),
                    ));
                }
            }
        }
        if self.endpoints_of(self.active).is_empty() {
            return Err(invalid(
                format!("endpoints.{}", self.active),
                "the active color needs at least one endpoint",
            ));
        }
        if let Some(p) = &self.preview {
            if self.endpoints_of(p.color).is_empty() {
                return Err(invalid(
                    format!("endpoints.{}", p.color),
                    "the preview color needs at least one endpoint",
                ));
            }
            if p.header.is_none() && p.cookie.is_none() {
                return Err(invalid(
                    "preview",
                    "a preview route needs a header or a cookie to match",
                ));
            }
            if let Some(h) = &p.header {
                if HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                    return Err(invalid(
                        "preview.header.name",
                        format!("{:?} is not a valid HTTP header name", h.name),
                    ));
                }
                if HeaderValue::from_str(&h.value).is_err() {
                    return Err(invalid(
                        "preview.header.value",
                        format!("{:?} is not a valid HTTP header value", h.value),
                    ));
                }
            }
            if let Some(c) = &p.cookie {
                if c.name.is_empty() || !c.name.bytes().all(is_token_byte) {
                    return Err(invalid(
                        "preview.cookie.name",
                        format!(
                            "{:?} is not a valid cookie name (letters, digits and !#$%&'*+-.^_`|~)",
                            c.name
                        ),
                    ));
                }
                if !c.value.bytes().all(is_cookie_octet) {
                    return Err(invalid(
                        "preview.cookie.value",
                        format!(
                            "{:?} is not a valid cookie value (no spaces, quotes, commas, semicolons or backslashes)",
                            c.value
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Parses and validates JSON, naming the offending field on error (unknown
    /// colors, malformed addresses and unknown fields included).
    pub fn from_json(bytes: &[u8]) -> Result<RouteTable, TableError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| TableError::Json(e.to_string()))?;
        let obj = value
            .as_object()
            .ok_or_else(|| invalid("(root)", "a route table is a JSON object"))?;
        for key in obj.keys() {
            if !["active", "preview", "endpoints"].contains(&key.as_str()) {
                return Err(invalid(
                    key.clone(),
                    "unknown field: allowed fields are active, preview, endpoints",
                ));
            }
        }
        let active = match obj.get("active") {
            Some(v) => color_from(v, "active")?,
            None => return Err(invalid("active", "missing: name the live color")),
        };
        let mut endpoints = BTreeMap::new();
        match obj.get("endpoints") {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (key, list) in map {
                    let field = format!("endpoints.{key}");
                    let color: Color = key.parse().map_err(|e| invalid(&field, format!("{e}")))?;
                    let items = list.as_array().ok_or_else(|| {
                        invalid(&field, "a list of addresses such as [\"127.0.0.1:8080\"]")
                    })?;
                    let mut addrs = Vec::with_capacity(items.len());
                    for (i, item) in items.iter().enumerate() {
                        let f = format!("{field}[{i}]");
                        let s = item.as_str().ok_or_else(|| {
                            invalid(&f, "an address string such as \"127.0.0.1:8080\"")
                        })?;
                        let addr: SocketAddr = s.parse().map_err(|_| {
                            invalid(
                                &f,
                                format!("{s:?} is not an IP:PORT address (e.g. \"127.0.0.1:8080\" or \"[::1]:8080\")"),
                            )
                        })?;
                        addrs.push(addr);
                    }
                    endpoints.insert(color, addrs);
                }
            }
            Some(_) => {
                return Err(invalid(
                    "endpoints",
                    "an object mapping colors to address lists",
                ));
            }
        }
        let preview = match obj.get("preview") {
            None | Some(Value::Null) => None,
            Some(Value::Object(p)) => {
                for key in p.keys() {
                    if !["color", "header", "cookie"].contains(&key.as_str()) {
                        return Err(invalid(
                            format!("preview.{key}"),
                            "unknown field: allowed fields are color, header, cookie",
                        ));
                    }
                }
                let color = match p.get("color") {
                    Some(v) => color_from(v, "preview.color")?,
                    None => {
                        return Err(invalid("preview.color", "missing: name the preview color"));
                    }
                };
                let header = name_value(p.get("header"), "preview.header")?
                    .map(|(name, value)| HeaderMatch { name, value });
                let cookie = name_value(p.get("cookie"), "preview.cookie")?
                    .map(|(name, value)| CookieMatch { name, value });
                Some(PreviewRoute {
                    color,
                    header,
                    cookie,
                })
            }
            Some(_) => {
                return Err(invalid(
                    "preview",
                    "an object {color, header?, cookie?} or null",
                ));
            }
        };
        let table = RouteTable {
            active,
            preview,
            endpoints,
        };
        table.validate()?;
        Ok(table)
    }
}

fn color_from(v: &Value, field: &str) -> Result<Color, TableError> {
    let s = v
        .as_str()
        .ok_or_else(|| invalid(field, "a color string: \"blue\" or \"green\""))?;
    s.parse().map_err(|e| invalid(field, format!("{e}")))
}

fn name_value(v: Option<&Value>, field: &str) -> Result<Option<(String, String)>, TableError> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(invalid(field, "an object {name, value}")),
    };
    let get = |k: &str| -> Result<String, TableError> {
        obj.get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| invalid(format!("{field}.{k}"), "missing or not a string"))
    };
    for key in obj.keys() {
        if key != "name" && key != "value" {
            return Err(invalid(
                format!("{field}.{key}"),
                "unknown field: allowed fields are name, value",
            ));
        }
    }
    Ok(Some((get("name")?, get("value")?)))
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 6265 `cookie-octet`.
fn is_cookie_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(json: &str) -> String {
        RouteTable::from_json(json.as_bytes())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn parses_a_full_table() {
        let t = RouteTable::from_json(
            br#"{"active":"blue","preview":{"color":"green","header":{"name":"x-preview","value":"1"}},
                "endpoints":{"blue":["127.0.0.1:1"],"green":["127.0.0.1:2","[::1]:3"]}}"#,
        )
        .unwrap();
        assert_eq!(t.active, Color::Blue);
        assert_eq!(t.endpoints_of(Color::Green).len(), 2);
        let round: RouteTable = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(round, t);
    }

    #[test]
    fn errors_name_the_field() {
        assert!(
            msg(r#"{"active":"green","endpoints":{"blue":["127.0.0.1:1"]}}"#)
                .starts_with("endpoints.green: the active color needs at least one endpoint")
        );
        assert!(msg(r#"{"active":"red"}"#).starts_with("active: unknown color \"red\""));
        assert!(
            msg(r#"{"active":"blue","endpoints":{"red":["127.0.0.1:1"]}}"#)
                .starts_with("endpoints.red: unknown color")
        );
        assert!(
            msg(r#"{"active":"blue","endpoints":{"blue":["localhost:80"]}}"#)
                .starts_with("endpoints.blue[0]: \"localhost:80\" is not an IP:PORT")
        );
        assert!(
            msg(r#"{"active":"blue","endpoints":{"blue":["127.0.0.1:1","127.0.0.1:1"]}}"#)
                .starts_with("endpoints.blue[1]: duplicate endpoint")
        );
        assert!(
            msg(r#"{"active":"blue","endpoints":{"blue":["127.0.0.1:1"]},"preview":{"color":"green","header":{"name":"x","value":"1"}}}"#)
                .starts_with("endpoints.green: the preview color needs")
        );
        assert!(
            msg(r#"{"active":"blue","endpoints":{"blue":["127.0.0.1:1"]},"preview":{"color":"blue"}}"#)
                .starts_with("preview: a preview route needs a header or a cookie")
        );
        assert!(
            msg(r#"{"active":"blue","endpoints":{"blue":["127.0.0.1:1"]},"preview":{"color":"blue","header":{"name":"bad name","value":"1"}}}"#)
                .starts_with("preview.header.name:")
        );
        assert!(
            msg(r#"{"active":"blue","endpoints":{"blue":["127.0.0.1:1"]},"preview":{"color":"blue","cookie":{"name":"c","value":"a;b"}}}"#)
                .starts_with("preview.cookie.value:")
        );
        assert!(msg(r#"{"active":"blue","extra":1}"#).starts_with("extra: unknown field"));
        assert!(msg("{").starts_with("route table is not valid JSON"));
        assert!(
            msg(r#"{"active":"blue","endpoints":{"blue":["0.0.0.0:80"]}}"#)
                .starts_with("endpoints.blue[0]:")
        );
    }
}
