//! CNI errors: a code from the spec (or ours, 100 and up), a message that
//! names the field, the value and what is allowed, and optional details.
//! Printed on stdout as `{"cniVersion", "code", "msg", "details"}`.

use ciliate_api::ClientError;
use serde_json::json;

/// The spec's well-known error codes and ours (100 and up).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration or `CNI_ARGS`.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist (the netns is gone).
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure: reading stdin, netlink, sysctl.
    pub const IO: u32 = 5;
    /// Failed to decode content (stdin, prevResult).
    pub const DECODE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later: the agent is unreachable or busy.
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS: the plugin cannot serve ADD now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// The agent refused the request (its message says why).
    pub const AGENT_REFUSED: u32 = 100;
    /// CHECK: the attachment is not what ADD made.
    pub const CHECK_FAILED: u32 = 101;
    /// ADD: a device of this attachment exists already (DEL was not run).
    pub const ALREADY_EXISTS: u32 = 102;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[code {}] {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

pub type CniResult<T> = Result<T, CniError>;

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    #[must_use]
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// `msg` is `context` followed by the error and its sources.
    pub fn from_error(code: u32, context: &str, err: &dyn std::error::Error) -> Self {
        Self::new(code, format!("{context}: {}", chain(err)))
    }

    /// An I/O-class failure (netlink, sysctl, namespaces) while doing `context`.
    pub fn io(context: &str, err: &dyn std::error::Error) -> Self {
        Self::from_error(code::IO, context, err)
    }

    /// A failed call to the agent. Unreachable or busy (503): try again later.
    /// Refused: the agent's own message, as it gave it.
    pub fn agent(context: &str, err: &ClientError) -> Self {
        match err {
            ClientError::Connect { .. } | ClientError::Io { .. } => {
                Self::from_error(code::TRY_AGAIN, context, err)
            }
            ClientError::Status {
                method,
                uri,
                status,
                message,
            } => {
                let code = if *status == 503 {
                    code::TRY_AGAIN
                } else {
                    code::AGENT_REFUSED
                };
                Self::new(code, format!("{context}: {message}")).with_details(format!(
                    "the agent answered {method} {uri} with HTTP {status}"
                ))
            }
            ClientError::Protocol { .. } | ClientError::Decode { .. } => {
                Self::from_error(code::AGENT_REFUSED, context, err)
            }
        }
    }

    /// Appends a note to the details.
    #[must_use]
    pub fn note(mut self, note: &str) -> Self {
        if !self.details.is_empty() {
            self.details.push_str("; ");
        }
        self.details.push_str(note);
        self
    }

    /// The spec's error object.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut v = json!({ "cniVersion": cni_version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            v["details"] = json!(self.details);
        }
        v
    }
}

/// An error and its sources joined by ": ", skipping a source whose text the
/// message before it already contains (some errors print their source).
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let e = CniError::new(
            code::INVALID_ENV,
            "CNI_IFNAME \"\" is invalid: must be 1-15 characters",
        );
        assert_eq!(
            e.to_json("1.1.0"),
            json!({"cniVersion": "1.1.0", "code": 4, "msg": "CNI_IFNAME \"\" is invalid: must be 1-15 characters"})
        );
        let e = e.with_details("more").note("and more");
        assert_eq!(e.to_json("0.4.0")["details"], "more; and more");
    }

    #[test]
    fn agent_errors_map_to_codes() {
        let unreachable = ClientError::Connect {
            path: "/run/x.sock".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        };
        let e = CniError::agent("allocating an address", &unreachable);
        assert_eq!(e.code, code::TRY_AGAIN);
        assert!(e
            .msg
            .starts_with("allocating an address: cannot reach the ciliate agent at /run/x.sock"));
        // The source is printed once, not twice.
        assert_eq!(
            e.msg.matches("No such file or directory").count(),
            1,
            "{}",
            e.msg
        );

        let exhausted = ClientError::Status {
            method: "POST".into(),
            uri: "/v1/ipam".into(),
            status: 503,
            message: "PodCIDR 10.0.0.0/29 is exhausted: all 5 addresses are allocated".into(),
        };
        let e = CniError::agent("allocating an address", &exhausted);
        assert_eq!(e.code, code::TRY_AGAIN);
        assert_eq!(
            e.msg,
            "allocating an address: PodCIDR 10.0.0.0/29 is exhausted: all 5 addresses are allocated"
        );
        let refused = ClientError::Status {
            method: "POST".into(),
            uri: "/v1/endpoint".into(),
            status: 400,
            message: "field mac: bad".into(),
        };
        assert_eq!(
            CniError::agent("registering", &refused).code,
            code::AGENT_REFUSED
        );
    }
}
