//! The cached route: `GET /api/restorePoints/{id}/vmRestorePoints`
//! (references, or `?format=Entity`), served from [`crate::cache`].
//!
//! The restore point ID is parsed here, at the edge: a path that has this
//! route's shape but not a UUID is answered 400 without contacting EM.
//! Other query parameters bypass the cache and go through [`crate::gateway::proxy`].

use std::sync::Arc;

use http::header::{HeaderName, HeaderValue, AGE};
use http::{Method, Response, StatusCode};

use crate::cache::{Cache, Fetched, Outcome, Served};
use crate::em::session::EmError;
use crate::gateway::app::App;
use crate::gateway::error::GatewayError;
use crate::gateway::proxy::X_REQUEST_ID;
use crate::gateway::render::{self, Prepared};
use crate::gateway::response::Body;
use crate::gateway::target::Target;

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

/// Whether the target is `/api/restorePoints/{id}/vmRestorePoints` (EM
/// matches its path segments ignoring case; so do we).
pub fn is_vm_points(target: &Target) -> bool {
    target.segments().len() == 3 && target.is(0, "restorePoints") && target.is(2, "vmRestorePoints")
}

/// The cached form for a query, or `None` when the query must bypass the cache.
///
/// Names compare ignoring case. `v` (the API version some clients add to
/// every request, e.g. the `veeam-em` package's `?v=latest`) does not change
/// this resource's answer, so it does not keep a request from the cache; it
/// is not sent to EM either.
pub fn form_of(target: &Target) -> Option<Form> {
    let mut form = Form::References;
    for (name, value) in target.query() {
        match (name.to_ascii_lowercase().as_str(), value.as_deref()) {
            ("v", _) => {}
            ("format", Some(v)) if v.eq_ignore_ascii_case("entity") => form = Form::Entity,
            _ => return None,
        }
    }
    Some(form)
}

/// The restore point `{id}` segment of any `/api/restorePoints/{id}[/...]` target.
pub fn restore_point_segment(target: &Target) -> Option<&str> {
    match target.segments() {
        [_, id, ..] if target.is(0, "restorePoints") => Some(id.as_str()),
        _ => None,
    }
}

/// Answers a GET/HEAD for the cached route.
pub async fn serve(
    app: &Arc<App>,
    method: &Method,
    headers: &http::HeaderMap,
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
        let mut em_headers = http::HeaderMap::new();
        if let Some(id) = headers.get(X_REQUEST_ID) {
            em_headers.insert(X_REQUEST_ID, id.clone());
        }
        let path = match form {
            Form::References => format!("/api/restorePoints/{id}/vmRestorePoints"),
            Form::Entity => format!("/api/restorePoints/{id}/vmRestorePoints?format=Entity"),
        };
        async move {
            let em = pool.get(&path, em_headers, false).await?;
            let base = pool.upstream().base_url();
            // JSON and XML both: twice the body's room for the conversion.
            let _room = pool
                .upstream()
                .reserve(render::conversion_room(&em, false))
                .await
                .map_err(EmError::Upstream)?;
            let prepared = Prepared::from_em(&em, base, case)?;
            match em.status {
                StatusCode::OK | StatusCode::NOT_FOUND => Ok(Fetched::fresh(prepared)),
                status => Err(GatewayError::Em {
                    status,
                    prepared: Box::new(prepared),
                }),
            }
        }
    };
    let head = method == Method::HEAD;
    match app.cache.get(key, &app.vm_policy, fetch).await {
        Ok(Served { entry, outcome, .. }) => {
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
        let t = |s: &str| {
            let (p, q) = match s.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (s, None),
            };
            Target::parse(p, q).unwrap()
        };
        let id = "dc216c04-2e34-478e-8b9b-49a3397ef6f8";
        assert!(is_vm_points(&t(&format!(
            "/api/restorePoints/{id}/vmRestorePoints"
        ))));
        assert!(is_vm_points(&t(&format!(
            "/api/restorepoints/{id}/VMRESTOREPOINTS/"
        ))));
        assert!(is_vm_points(&t("/api/restorePoints/abc/vmRestorePoints")));
        assert!(!is_vm_points(&t(&format!("/api/restorePoints/{id}"))));
        assert!(!is_vm_points(&t(&format!(
            "/api/restorePoints/{id}/backupFiles"
        ))));
        let form = |q: &str| form_of(&t(&format!("/api/x?{q}")));
        assert_eq!(form_of(&t("/api/x")), Some(Form::References));
        assert_eq!(form("format=Entity"), Some(Form::Entity));
        assert_eq!(form("Format=ENTITY"), Some(Form::Entity));
        assert_eq!(form("format=Entity&x=1"), None);
        assert_eq!(form("v=latest"), Some(Form::References));
        assert_eq!(form("V=latest&format=Entity"), Some(Form::Entity));
        assert_eq!(form("sortAsc=name"), None);
        assert_eq!(
            restore_point_segment(&t(&format!("/api/restorePoints/{id}"))),
            Some(id)
        );
        assert_eq!(
            restore_point_segment(&t("/api/restorePoints/x/backupFiles")),
            Some("x")
        );
        assert_eq!(restore_point_segment(&t("/api/restorePoints")), None);
    }
}
