//! The cached route: `GET /api/restorePoints/{id}/vmRestorePoints`
//! (references, or `?format=Entity`), served from [`crate::cache`].
//!
//! The restore point ID is parsed here, at the edge: a path that has this
//! route's shape but not a UUID is answered 400 without contacting EM.
//! Other query parameters bypass the cache and go through [`crate::gateway::proxy`].

use std::sync::Arc;

use http::header::{HeaderName, HeaderValue, AGE};
use http::request::Parts;
use http::{Method, Response, StatusCode};

use crate::cache::{Cache, Outcome};
use crate::gateway::app::App;
use crate::gateway::error::GatewayError;
use crate::gateway::render::Prepared;
use crate::gateway::response::Body;

/// A restore point ID: a UUID, lowercase, parsed once at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RestorePointId(uuid::Uuid);

impl RestorePointId {
    /// Parses the path segment; anything but a UUID (36 characters, hyphenated) is refused.
    pub fn parse(segment: &str) -> Option<RestorePointId> {
        if segment.len() != 36 {
            return None;
        }
        uuid::Uuid::try_parse(segment).ok().map(RestorePointId)
    }
}

impl std::fmt::Display for RestorePointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// Which representation of the collection EM was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Form {
    /// The default: `EntityReferences` of `Ref`s.
    References,
    /// `?format=Entity`: `VmRestorePoints` entities.
    Entity,
}

/// Cache key: the parsed restore point ID and form, and nothing else a
/// client sends (host, headers, other query parameters), so no client can
/// poison another's answer. Links are filled in per client when served
/// (see [`crate::gateway::render::Template`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    /// The restore point.
    pub id: RestorePointId,
    /// The form.
    pub form: Form,
}

/// The vmRestorePoints cache: EM's answers prepared for every client (a hit
/// never converts); only EM's 200 and 404 are stored.
pub type VmPointsCache = Cache<Key, Prepared, GatewayError>;

/// `X-Cache: HIT|MISS|STALE`.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// The `{id}` segment if `path` is `/api/restorePoints/{id}/vmRestorePoints`
/// (EM matches its path segments ignoring case; so do we).
pub fn match_route(path: &str) -> Option<&str> {
    let id = restore_point_segment(path)?;
    let tail = path
        .get("/api/restorePoints/".len() + id.len()..)?
        .strip_prefix('/')?;
    let tail = tail.strip_suffix('/').unwrap_or(tail);
    tail.eq_ignore_ascii_case("vmRestorePoints").then_some(id)
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// The cached form for a query, or `None` when the query must bypass the cache.
///
/// `v` (the API version some clients add to every request, e.g. the
/// `veeam-em` package's `?v=latest`) does not change this resource's answer,
/// so it does not keep a request from the cache; it is not sent to EM either.
pub fn form_of(query: Option<&str>) -> Option<Form> {
    let mut form = Form::References;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "v" => {}
            "format" if value.eq_ignore_ascii_case("entity") => form = Form::Entity,
            _ => return None,
        }
    }
    Some(form)
}

/// The restore point `{id}` segment of any `/api/restorePoints/{id}[/...]` path.
pub fn restore_point_segment(path: &str) -> Option<&str> {
    let rest = strip_prefix_ignore_case(path, "/api/restorePoints/")?;
    let id = rest.split('/').next().unwrap_or(rest);
    (!id.is_empty()).then_some(id)
}

/// Answers a GET/HEAD for the cached route.
pub async fn serve(
    app: &Arc<App>,
    parts: &Parts,
    id: RestorePointId,
    form: Form,
    xml: bool,
    public: &str,
) -> Response<Body> {
    let key = Key { id, form };
    // Built only on a miss: a hit must not pay for copying headers.
    let fetch = || {
        let pool = app.pool.clone();
        let case = app.settings.json_case;
        // One fetch serves every client: only the request id of the client
        // that caused it goes along, nothing that could shape the answer.
        let mut headers = http::HeaderMap::new();
        if let Some(id) = parts.headers.get("x-request-id") {
            headers.insert("x-request-id", id.clone());
        }
        let path = match form {
            Form::References => format!("/api/restorePoints/{id}/vmRestorePoints"),
            Form::Entity => format!("/api/restorePoints/{id}/vmRestorePoints?format=Entity"),
        };
        async move {
            let em = crate::gateway::proxy::fetch(&pool, &path, headers).await?;
            let base = pool.upstream().base_url();
            let prepared = Prepared::from_em(&em, base, case)?;
            match em.status {
                StatusCode::OK | StatusCode::NOT_FOUND => Ok(prepared),
                status => Err(GatewayError::Em {
                    status,
                    prepared: Box::new(prepared),
                }),
            }
        }
    };
    let head = parts.method == Method::HEAD;
    match app.cache.get(key, fetch).await {
        Ok((entry, outcome)) => {
            let (body, content_type) = entry.value.body_for(xml, public);
            let mut response = Response::new(if head {
                Body::default()
            } else {
                Body::new(body)
            });
            *response.status_mut() = entry.value.status;
            let headers = response.headers_mut();
            headers.insert(http::header::CONTENT_TYPE, content_type);
            headers.insert(X_CACHE, HeaderValue::from_static(outcome.as_str()));
            if outcome != Outcome::Miss {
                headers.insert(AGE, HeaderValue::from(entry.age_secs()));
            }
            response
        }
        Err(error) => {
            if error.status().is_server_error() {
                tracing::warn!(error = %error, "vmRestorePoints fetch failed");
            }
            let mut response = error.to_response(xml, app.settings.json_case, public);
            response
                .headers_mut()
                .insert(X_CACHE, HeaderValue::from_static(Outcome::Miss.as_str()));
            if head {
                *response.body_mut() = Body::default();
            }
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_point_ids_must_be_hyphenated_uuids_and_are_lowercased() {
        let id = RestorePointId::parse("DC216C04-2E34-478E-8B9B-49A3397EF6F8").unwrap();
        assert_eq!(id.to_string(), "dc216c04-2e34-478e-8b9b-49a3397ef6f8");
        for bad in [
            "abc",
            "..",
            "%2e%2e",
            "dc216c042e34478e8b9b49a3397ef6f8",
            &"a".repeat(300),
            "{dc216c04-2e34-478e-8b9b-49a3397ef6f8}",
        ] {
            assert!(RestorePointId::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_route_and_its_forms() {
        let id = "dc216c04-2e34-478e-8b9b-49a3397ef6f8";
        assert_eq!(
            match_route(&format!("/api/restorePoints/{id}/vmRestorePoints")),
            Some(id)
        );
        assert_eq!(
            match_route(&format!("/api/restorepoints/{id}/VMRESTOREPOINTS/")),
            Some(id)
        );
        assert_eq!(
            match_route("/api/restorePoints/abc/vmRestorePoints"),
            Some("abc")
        );
        assert_eq!(match_route(&format!("/api/restorePoints/{id}")), None);
        assert_eq!(
            match_route(&format!("/api/restorePoints/{id}/backupFiles")),
            None
        );
        assert_eq!(form_of(None), Some(Form::References));
        assert_eq!(form_of(Some("format=Entity")), Some(Form::Entity));
        assert_eq!(form_of(Some("format=ENTITY")), Some(Form::Entity));
        assert_eq!(form_of(Some("format=Entity&x=1")), None);
        assert_eq!(form_of(Some("v=latest")), Some(Form::References));
        assert_eq!(form_of(Some("v=latest&format=Entity")), Some(Form::Entity));
        assert_eq!(
            restore_point_segment(&format!("/api/restorePoints/{id}")),
            Some(id)
        );
        assert_eq!(
            restore_point_segment("/api/restorePoints/x/backupFiles"),
            Some("x")
        );
        assert_eq!(restore_point_segment("/api/restorePoints"), None);
        assert_eq!(form_of(Some("sortAsc=name")), None);
    }
}
