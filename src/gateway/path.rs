//! What a client may ask EM for: the path checks made before anything
//! reaches EM (CONTRACT §5).

use crate::gateway::error::GatewayError;

/// Longest path (with query) the gateway forwards.
pub const MAX_PATH_LEN: usize = 2048;

/// Checks that `path_and_query` names an EM API resource and nothing else:
/// `/api` or `/api/...`, no `.`/`..` or empty segments, no encoded `/`, `\`
/// or `.`, no percent-encoded letters, digits or `-_~`, no backslashes or
/// control characters, bounded length.
///
/// Why so strict: EM (WCF) ignores doubled slashes and decodes escapes, so
/// `/api//logonSessions` or `/api/logon%53essions` would reach EM's own
/// logonSessions past the gateway's handlers. After these checks the path
/// the gateway routes on is the path EM resolves.
pub fn check_api_path(path: &str, query: Option<&str>) -> Result<(), GatewayError> {
    let bad = |why: &str| {
        Err(GatewayError::BadRequest(format!(
            "rejected request path: {why}"
        )))
    };
    if path.len() + query.map_or(0, str::len) > MAX_PATH_LEN {
        return bad("too long");
    }
    if path != "/api" && !path.starts_with("/api/") {
        return bad("only /api/ paths are served");
    }
    if path.contains('\\') || path.bytes().any(|b| b.is_ascii_control()) {
        return bad("backslash or control character");
    }
    if has_encoded_separator(path.as_bytes()) {
        return bad("encoded '/', '\\' or '.'");
    }
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return bad("'.' or '..' segment");
    }
    // An empty segment anywhere but at the very end ("/api/x/" is fine).
    if path.trim_end_matches('/').contains("//") || path.ends_with("//") {
        return bad("empty path segment");
    }
    if has_encoded_unreserved(path.as_bytes()) {
        return bad("percent-encoded letter, digit or '-', '_', '~'");
    }
    if query.is_some_and(|q| q.bytes().any(|b| b.is_ascii_control())) {
        return bad("control character in query");
    }
    Ok(())
}

/// Whether `path` holds `%2f`, `%5c`, `%2e` or `%00` (any case): encodings
/// that could smuggle a separator or a dot segment past the checks above.
fn has_encoded_separator(path: &[u8]) -> bool {
    path.windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_lowercase()),
                (b'2', b'f') | (b'5', b'c') | (b'2', b'e') | (b'0', b'0')
            )
    })
}

/// Whether `path` percent-encodes a character that never needs it: no
/// client has a reason to, and EM would decode it into a different route.
fn has_encoded_unreserved(path: &[u8]) -> bool {
    path.windows(3).any(|w| {
        let hex = |b: u8| (b as char).to_digit(16);
        match (w[0], hex(w[1]), hex(w[2])) {
            (b'%', Some(hi), Some(lo)) => {
                let c = (hi * 16 + lo) as u8;
                c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'~')
            }
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_paths_pass_and_tricks_do_not() {
        for ok in [
            "/api",
            "/api/",
            "/api/restorePoints/x/vmRestorePoints",
            "/api/query",
            "/api/catalog/vms/web%20server%2301",
            "/api/restorePoints/x/vmRestorePoints/",
        ] {
            assert!(check_api_path(ok, None).is_ok(), "{ok}");
        }
        for bad in [
            "/",
            "/apix",
            "/metrics",
            "/api/../admin",
            "/api/./x",
            "/api/%2e%2e/x",
            "/api/a%2Fb",
            "/api/a%5cb",
            "/api/a\\b",
            "/api//logonSessions",
            "/api/logon%53essions",
            "/api/restorePoints//x",
            "/api/x//",
        ] {
            assert!(check_api_path(bad, None).is_err(), "{bad}");
        }
        assert!(check_api_path(&format!("/api/{}", "a".repeat(MAX_PATH_LEN)), None).is_err());
    }
}
