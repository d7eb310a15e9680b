//! What a client gets from EM's XML answer: JSON in the deployment's case,
//! or XML for clients that prefer it, with every EM URL pointed at the
//! gateway (see README, "HTTP surface"; README, "JSON, and which EM version you have").
//!
//! Two ways to get there:
//! - [`render`], for pass-through requests: convert once, for this client.
//! - [`Prepared`], for the cache: converted once, kept as [`Template`]s that
//!   are split where EM's base URL occurs, so a hit only splices in the
//!   requesting client's public URL (never another host's) and never converts.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use std::net::SocketAddr;

use crate::config::{JsonCase, Settings};
use crate::convert::{self, Case, ConvertError, Rewrite};
use crate::em::client::UpstreamResponse;
use crate::gateway::host::Authority;
use crate::gateway::response::Body;

/// `Content-Type` of JSON answers.
pub const JSON: HeaderValue = HeaderValue::from_static("application/json; charset=utf-8");
/// `Content-Type` of XML answers.
pub const XML: HeaderValue = HeaderValue::from_static("application/xml; charset=utf-8");

/// `Content-Type` of answers whose body is not one of EM's documents (a
/// download, or whatever else EM sent): bytes, never for a browser to
/// render.
pub const BYTES: HeaderValue = HeaderValue::from_static("application/octet-stream");
/// `Cache-Control` of `/api` answers: what EM gives through the pooled
/// session is not for shared caches.
const PRIVATE: HeaderValue = HeaderValue::from_static("private");
/// The same, where EM said `no-cache`.
const PRIVATE_NO_CACHE: HeaderValue = HeaderValue::from_static("private, no-cache");
/// `X-Content-Type-Options` of `/api` answers.
const NOSNIFF: HeaderValue = HeaderValue::from_static("nosniff");

/// What every `/api` answer carries, whoever made it (a hit, EM's answer
/// passed through, an error, a 304, the drop-in logon):
/// `X-Content-Type-Options: nosniff`; `Cache-Control: private` (EM's own
/// kept when it already says `private` or `no-store`, `no-cache` kept
/// beside it); and a `Content-Type` the gateway made, JSON or XML, else
/// [`BYTES`]. Static values only: a hit allocates nothing here.
pub fn api_headers(headers: &mut HeaderMap) {
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, NOSNIFF);
    let mut no_cache = false;
    let mut strict = false;
    for value in headers.get_all(header::CACHE_CONTROL) {
        for directive in value.to_str().unwrap_or("").split(',') {
            let d = directive.trim();
            strict |= d.eq_ignore_ascii_case("private") || d.eq_ignore_ascii_case("no-store");
            no_cache |= d.eq_ignore_ascii_case("no-cache");
        }
    }
    if !strict {
        let value = if no_cache { PRIVATE_NO_CACHE } else { PRIVATE };
        headers.insert(header::CACHE_CONTROL, value);
    }
    if headers
        .get(CONTENT_TYPE)
        .is_some_and(|t| *t != JSON && *t != XML)
    {
        headers.insert(CONTENT_TYPE, BYTES);
    }
}

/// How a browser's headers showed a request to come from another site's page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrossSite {
    /// `Sec-Fetch-Site` says `cross-site` or `same-site`.
    SecFetchSite,
    /// `Origin` is not the gateway's public origin.
    Origin,
}

/// Whether a request with side effects may come from where it says it
/// does. Scripts and EM clients send neither header and pass. A browser
/// sends `Sec-Fetch-Site` (a page cannot forge it): it must say
/// `same-origin` (or `none`, typed by the user). Browsers too old for it
/// send `Origin` with an unsafe method, which must then be the gateway's
/// public origin (`public`). `Sec-Fetch-Site` comes first because behind a
/// TLS-terminating proxy without `EMGATE_PUBLIC_URL` the gateway may not
/// know its public origin.
pub fn from_own_pages(headers: &HeaderMap, public: &str) -> Result<(), CrossSite> {
    if let Some(site) = headers.get("sec-fetch-site") {
        return match site.as_bytes() {
            b"same-origin" | b"none" => Ok(()),
            _ => Err(CrossSite::SecFetchSite),
        };
    }
    match headers.get(header::ORIGIN) {
        Some(origin) if !origin.to_str().is_ok_and(|o| is_origin_of(o, public)) => {
            Err(CrossSite::Origin)
        }
        _ => Ok(()),
    }
}

/// How one request's answers are written: XML or JSON (in the deployment's
/// case), with every EM URL pointed at `public`, the gateway's base as this
/// client reached it ([`public_base`]). Worked out once per request at the
/// edge; every phase that answers takes it rather than loose flags.
#[derive(Debug, Clone)]
pub struct Representation {
    /// XML (the client's `Accept` prefers it) rather than JSON.
    pub xml: bool,
    /// JSON's member names: EM 12's PascalCase or EM 13's camelCase.
    pub case: JsonCase,
    /// The gateway's base URL for this request, without a trailing `/`.
    pub public: Arc<str>,
}

/// The converter's name for the deployment's case.
pub fn case(case: JsonCase) -> Case {
    match case {
        JsonCase::Pascal => Case::Pascal,
        JsonCase::Camel => Case::Camel,
    }
}

/// The base URL this client reaches the gateway at: `EMGATE_PUBLIC_URL`, or
/// built from the host the request named (already checked by
/// [`crate::gateway::host`]; with `EMGATE_TRUST_FORWARDED`, a valid
/// `X-Forwarded-Host`/`-Proto`), or else the bound address.
///
/// Only checked values are used, so a client cannot inject text into the
/// links it gets.
pub fn public_base(
    settings: &Settings,
    host: Option<&Authority>,
    headers: &HeaderMap,
    tls: bool,
    bound: SocketAddr,
) -> Arc<str> {
    if let Some(url) = &settings.listen.public_url {
        return url.to_string().trim_end_matches('/').into();
    }
    let forwarded = |name: &str| {
        settings
            .listen
            .trust_forwarded
            .then(|| headers.get(name))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
    };
    let https = match forwarded("x-forwarded-proto") {
        Some("https") => true,
        Some("http") => false,
        _ => tls,
    };
    let forwarded_host = forwarded("x-forwarded-host").and_then(Authority::parse);
    match forwarded_host.as_ref().or(host) {
        // Made with the authority, once per distinct name.
        Some(h) => h.base(https),
        None if https => format!("https://{bound}").into(),
        None => format!("http://{bound}").into(),
    }
}

/// Whether `origin` (an `Origin` header's value) is the origin of the
/// public base URL `public` (which may carry a path).
pub fn is_origin_of(origin: &str, public: &str) -> bool {
    let Ok(uri) = public.parse::<http::Uri>() else {
        return false;
    };
    match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(authority)) => {
            origin.eq_ignore_ascii_case(&format!("{scheme}://{}", authority.as_str()))
        }
        _ => false,
    }
}

/// EM headers a client may get (allow-list, see README, "Client access"): what describes
/// the answer, and where EM points the client, rewritten to the gateway.
/// Never EM's session token, cookies, authentication challenge, server
/// identity or its own `ETag` (the client gets another representation).
const FROM_EM: [HeaderName; 9] = [
    header::ALLOW,
    header::CACHE_CONTROL,
    header::CONTENT_DISPOSITION,
    header::CONTENT_LANGUAGE,
    header::CONTENT_LOCATION,
    header::EXPIRES,
    header::LAST_MODIFIED,
    header::LOCATION,
    header::RETRY_AFTER,
];

/// The EM headers a client may get, as EM wrote them.
fn allowed_headers(em: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in &FROM_EM {
        for value in em.get_all(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The EM headers a client gets, `Location` and `Content-Location`
/// pointed at the gateway like Hrefs.
pub fn client_headers(em: &HeaderMap, em_base: &str, public: &str) -> HeaderMap {
    // Room for what the gateway adds to every answer (type, cache status,
    // age, tags, nosniff, cache control, request id): one allocation, not
    // a map grown three times on every hit.
    let mut out = HeaderMap::with_capacity(HEAD_ROOM);
    for name in &FROM_EM {
        for value in em.get_all(name) {
            let value = if name == header::LOCATION || name == header::CONTENT_LOCATION {
                match rewrite_url(value, em_base, public) {
                    Some(v) => v,
                    None => continue,
                }
            } else {
                value.clone()
            };
            out.append(name.clone(), value);
        }
    }
    out
}

/// `value` with EM's base URL replaced by `public` (case-insensitive scheme
/// and host, as URLs compare); other values as they are.
fn rewrite_url(value: &HeaderValue, em_base: &str, public: &str) -> Option<HeaderValue> {
    let text = value.to_str().ok()?;
    let head = text.get(..em_base.len());
    let rest = text.get(em_base.len()..).unwrap_or("");
    if head.is_some_and(|h| h.eq_ignore_ascii_case(em_base))
        && (rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
    {
        HeaderValue::from_str(&format!("{public}{rest}")).ok()
    } else {
        Some(value.clone())
    }
}

/// Bytes a conversion of `em` needs on top of the body (see README, "Configuration",
/// `EMGATE_UPSTREAM_MEMORY`): JSON about twice the body (the converter's
/// index and its output), XML a rewritten copy.
pub fn conversion_room(em: &UpstreamResponse, xml: bool) -> usize {
    if xml {
        em.body.len()
    } else {
        em.body.len().saturating_mul(2)
    }
}

/// A HEAD's answer: EM's status and the headers a GET would carry, no body
/// (none was kept).
pub fn head(em: UpstreamResponse, em_base: &str, to: &Representation) -> Response<Body> {
    let xml = to.xml;
    let mut response = Response::new(Body::default());
    *response.status_mut() = em.status;
    let mut headers = client_headers(&em.headers, em_base, &to.public);
    if looks_like_xml(&em.headers) {
        headers.insert(CONTENT_TYPE, if xml { XML } else { JSON });
    } else if let Some(t) = em.headers.get(CONTENT_TYPE) {
        headers.insert(CONTENT_TYPE, t.clone());
    }
    *response.headers_mut() = headers;
    response
}

/// Converts EM's answer for one client. Bodies that are not XML (a 204, say)
/// pass through unchanged.
pub fn render(
    em: UpstreamResponse,
    em_base: &str,
    to: &Representation,
) -> Result<Response<Body>, ConvertError> {
    let (xml, case, public) = (to.xml, to.case, &*to.public);
    let mut headers = client_headers(&em.headers, em_base, public);
    if em.body.is_empty() || !looks_like_xml(&em.headers) {
        if let Some(t) = em.headers.get(CONTENT_TYPE) {
            headers.insert(CONTENT_TYPE, t.clone());
        }
        let mut response = Response::new(Body::new(em.body));
        *response.status_mut() = em.status;
        *response.headers_mut() = headers;
        return Ok(response);
    }
    let rewrite = Rewrite {
        from: em_base,
        to: public,
    };
    let mut out = Vec::with_capacity(em.body.len() + em.body.len() / 4);
    if xml {
        convert::rewrite_xml(&em.body, &rewrite, &mut out)?;
    } else {
        convert::to_json(&em.body, self::case(case), Some(&rewrite), &mut out)?;
    }
    let mut response = Response::new(Body::new(Bytes::from(out)));
    *response.status_mut() = em.status;
    headers.insert(CONTENT_TYPE, if xml { XML } else { JSON });
    *response.headers_mut() = headers;
    Ok(response)
}

/// EM labels its documents `application/xml`; a missing type is taken as XML too.
fn looks_like_xml(headers: &HeaderMap) -> bool {
    match headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(t) => {
            let t = t.to_ascii_lowercase();
            t.contains("xml")
        }
    }
}

/// How much longer than EM's base URL a public base may be and still have
/// its rendering kept (the weight allows for this much).
const KEPT_BASE_SLACK: usize = 32;

/// A document split wherever EM's base URL occurred; the gaps are filled
/// with a client's public base URL when it is served.
///
/// The first rendering is kept with its `ETag`: nearly every deployment has
/// one public base (`EMGATE_PUBLIC_URL`, or the one name clients use), so a
/// hit is then a comparison and reference-counted clones, with no copy at all.
#[derive(Debug, Clone)]
pub struct Template {
    /// Literal pieces; a public base goes between each two.
    parts: Vec<Bytes>,
    /// Total length of the pieces.
    literal_len: usize,
    /// Length of the base that was cut out (to size the kept rendering).
    needle_len: usize,
    /// A hash of the pieces (with the public base, it makes the `ETag`).
    tag: u64,
    /// The first base served, the document rendered with it, and its `ETag`.
    first: OnceLock<(Box<str>, Bytes, HeaderValue)>,
}

impl Template {
    /// Splits `doc` wherever EM's base URL `needle` starts a URL (the
    /// converter's own matching rules, so cached and passed-through answers
    /// get the same links).
    pub fn split(doc: Bytes, needle: &str) -> Template {
        let mut parts = Vec::new();
        let mut start = 0;
        let mut cut = 0;
        for (pos, len) in convert::base_url_spans(&doc, needle) {
            parts.push(doc.slice(start..pos));
            start = pos + len;
            cut += len;
        }
        parts.push(doc.slice(start..));
        let literal_len = doc.len() - cut;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for p in &parts {
            p.hash(&mut h);
        }
        Template {
            parts,
            literal_len,
            needle_len: needle.len(),
            tag: h.finish(),
            first: OnceLock::new(),
        }
    }

    /// The document with `base` in every gap.
    pub fn render(&self, base: &str) -> Bytes {
        self.render_tagged(base, "").0
    }

    /// The document with `base` in every gap, and its strong `ETag`
    /// (`kind` tells representations apart).
    fn render_tagged(&self, base: &str, kind: &str) -> (Bytes, HeaderValue) {
        // Kept only for a base within the size the weight allows for, so a
        // long `Host` cannot make an entry bigger than the cache counts.
        if base.len() > self.needle_len + KEPT_BASE_SLACK {
            return (self.fill(base), self.etag(base, kind));
        }
        let (first_base, first_doc, first_tag) = self
            .first
            .get_or_init(|| (base.into(), self.fill(base), self.etag(base, kind)));
        if **first_base == *base {
            return (first_doc.clone(), first_tag.clone());
        }
        (self.fill(base), self.etag(base, kind))
    }

    /// `"<kind><hash of the pieces>-<hash of the base>"`: the bytes a client
    /// gets depend on both (a document without links on the pieces alone).
    fn etag(&self, base: &str, kind: &str) -> HeaderValue {
        let base_tag = if self.parts.len() > 1 {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            base.hash(&mut h);
            h.finish() as u32
        } else {
            0
        };
        HeaderValue::from_str(&format!("\"{kind}{:016x}-{base_tag:08x}\"", self.tag))
            .unwrap_or_else(|_| HeaderValue::from_static("\"x\""))
    }

    fn fill(&self, base: &str) -> Bytes {
        if let [only] = self.parts.as_slice() {
            return only.clone();
        }
        let gaps = self.parts.len() - 1;
        let mut out = BytesMut::with_capacity(self.literal_len + gaps * base.len());
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(base.as_bytes());
            }
            out.extend_from_slice(part);
        }
        out.freeze()
    }

    fn to_wire(&self) -> wire::Template {
        wire::Template {
            parts: self.parts.iter().map(|p| p.to_vec()).collect(),
            needle_len: self.needle_len as u32,
        }
    }

    /// `None` for a template without pieces: one has at least one, and
    /// rendering relies on it.
    fn from_wire(w: wire::Template) -> Option<Template> {
        if w.parts.is_empty() {
            return None;
        }
        let parts: Vec<Bytes> = w.parts.into_iter().map(Bytes::from).collect();
        let literal_len = parts.iter().map(Bytes::len).sum();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for p in &parts {
            p.hash(&mut h);
        }
        Some(Template {
            parts,
            literal_len,
            needle_len: w.needle_len as usize,
            tag: h.finish(),
            first: OnceLock::new(),
        })
    }

    /// Bytes held, counting the kept rendering (sized as if the public
    /// base were as long as EM's) so the cache's bound covers it.
    pub fn weight(&self) -> usize {
        let gaps = self.parts.len() - 1;
        let kept = if gaps == 0 {
            0
        } else {
            self.literal_len + gaps * (self.needle_len + KEPT_BASE_SLACK)
        };
        self.literal_len + kept + self.parts.len() * std::mem::size_of::<Bytes>()
    }
}

/// An answer's body, ready for every client.
// Nearly every answer is a converted document: boxing it to shrink the
// rare variants would only add an indirection to every hit.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Doc {
    /// One of EM's XML documents: JSON in the deployment's case, and EM's XML.
    Converted {
        /// The JSON representation.
        json: Template,
        /// EM's XML.
        xml: Template,
    },
    /// Something else EM sent (a file, a plain text), passed on as it came.
    Raw {
        /// The bytes.
        bytes: Bytes,
        /// EM's `Content-Type`, if any.
        content_type: Option<HeaderValue>,
    },
    /// No body (EM's 204, or a HEAD's answer whose body was not kept).
    Empty {
        /// Whether EM's answer was an XML document (then the client is told
        /// the type it would get).
        xml_doc: bool,
    },
}

/// One EM answer prepared for every client: status, the EM headers a client
/// may get, and the body in every representation.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// EM's status.
    pub status: StatusCode,
    /// EM's headers a client may get (allow-list); `Location` as EM wrote
    /// it, pointed at each client's gateway URL when served.
    pub headers: HeaderMap,
    /// The body.
    pub doc: Doc,
    /// The deployment's JSON case (part of the JSON `ETag`).
    case: JsonCase,
    /// `Last-Modified` of the entry holding it, with the time it was made
    /// for (see [`Prepared::last_modified`]).
    modified: OnceLock<(SystemTime, HeaderValue)>,
    /// The whole head of the answer given most often, per representation
    /// (see [`Prepared::whole_head`]).
    wholes: [OnceLock<Box<WholeHead>>; 2],
}

/// A whole head kept for one representation: the public base and the
/// entry's fetch time it was made for, the head, and the body and `ETag`
/// it goes with (the body shares the bytes kept for that base). Boxed in
/// the entry: a pointer for an entry no hit reads, where the map itself
/// is 96 bytes.
type WholeHead = (Box<str>, SystemTime, HeaderMap, Bytes, HeaderValue);

/// Room a kept whole head takes in an entry's weight: the map, a bucket
/// for each of EM's allowed headers and for the nine the gateway and each
/// answer add, its index, and the public base.
fn whole_head_weight(em_headers: usize) -> usize {
    std::mem::size_of::<WholeHead>()
        + (std::mem::size_of::<(HeaderName, HeaderValue)>() + 24) * (em_headers + 9)
        + 4 * 32
        + 64
}

/// Room the kept `Last-Modified` takes in an entry's weight: the time, the
/// value and its 29 bytes.
const LAST_MODIFIED_WEIGHT: usize =
    std::mem::size_of::<(SystemTime, HeaderValue)>() + "Thu, 01 Jan 1970 00:00:00 GMT".len();

/// Headers a client's answer has room for from the start: EM's, the type,
/// the tag, nosniff, cache control, and what each request adds (cache
/// status, age, last modified, request id).
pub const HEAD_ROOM: usize = 16;

impl crate::cache::Stored for Prepared {
    fn weight(&self) -> usize {
        Prepared::weight(self)
    }

    fn is_negative(&self) -> bool {
        self.status == StatusCode::NOT_FOUND
    }
}

impl Prepared {
    /// Prepares EM's answer once: converts an XML document (the error means
    /// EM sent garbage), keeps anything else as it is.
    pub fn from_em(
        em: &UpstreamResponse,
        em_base: &str,
        case: JsonCase,
    ) -> Result<Prepared, ConvertError> {
        let headers = allowed_headers(&em.headers);
        let xml_doc = looks_like_xml(&em.headers);
        let doc = if em.body.is_empty() {
            Doc::Empty { xml_doc }
        } else if !xml_doc {
            Doc::Raw {
                bytes: Bytes::copy_from_slice(&em.body),
                content_type: em.headers.get(CONTENT_TYPE).map(raw_content_type),
            }
        } else {
            let mut json = Vec::with_capacity(em.body.len() + em.body.len() / 4);
            convert::to_json(&em.body, self::case(case), None, &mut json)?;
            // Kept for the entry's lifetime: hold only what is used (the
            // weigher counts lengths, so spare capacity would be memory it
            // cannot see).
            json.shrink_to_fit();
            Doc::Converted {
                json: Template::split(Bytes::from(json), em_base),
                // A copy: the body may be a slice of a larger read buffer
                // that would otherwise live as long as the entry.
                xml: Template::split(Bytes::copy_from_slice(&em.body), em_base),
            }
        };
        Ok(Prepared {
            status: em.status,
            headers,
            doc,
            case,
            modified: OnceLock::new(),
            wholes: Default::default(),
        })
    }

    /// Bytes held by every representation and the headers.
    pub fn weight(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        headers
            + 2 * whole_head_weight(self.headers.len())
            + LAST_MODIFIED_WEIGHT
            + match &self.doc {
                Doc::Converted { json, xml } => json.weight() + xml.weight(),
                Doc::Raw { bytes, .. } => bytes.len(),
                Doc::Empty { .. } => 0,
            }
    }

    /// The body and the head a client at `public` gets (the status is
    /// [`Prepared::status`]): EM's allowed headers with links pointed at
    /// `public`, `Content-Type`, a 200's `ETag`, and what every `/api`
    /// answer carries ([`api_headers`]), in a map with room for what each
    /// answer adds (cache status, age, request id). Made anew each time:
    /// the answer given over and over, a plain hit, is a clone of a whole
    /// head kept per representation ([`Prepared::whole_head`]); the others
    /// (a miss, a stale or shared entry, another base) are few.
    pub fn answer(&self, xml: bool, public: &str, em_base: &str) -> (Bytes, HeaderMap) {
        let (body, content_type, etag) = self.representation(xml, public);
        let mut head = client_headers(&self.headers, em_base, public);
        if let Some(t) = content_type {
            head.insert(CONTENT_TYPE, t);
        }
        if self.status == StatusCode::OK {
            head.insert(header::ETAG, etag);
        }
        api_headers(&mut head);
        (body, head)
    }

    /// Whether the whole head of the representation (`xml` or JSON) is
    /// made (see [`Prepared::whole_head`]).
    pub fn has_whole_head(&self, xml: bool) -> bool {
        self.wholes[usize::from(xml)].get().is_some()
    }

    /// The body, its `ETag`, and a whole head for it: what `finish` makes,
    /// once per representation, of [`Prepared::answer`]'s head, for the
    /// first public base served and an entry fetched at `at`. The answer
    /// given most often (a hit) is then a clone of a map that has every
    /// header in place and never grows; what changes per request is
    /// written into slots `finish` put there. The body and tag are kept
    /// beside it, so a hit does not look them up again (about 150
    /// instructions). `None` for another base or another fetch time (the
    /// caller makes that answer as any other).
    pub fn whole_head(
        &self,
        xml: bool,
        public: &str,
        em_base: &str,
        at: SystemTime,
        finish: impl FnOnce(HeaderMap) -> HeaderMap,
    ) -> Option<(&Bytes, &HeaderValue, &HeaderMap)> {
        // The same bound as a kept body and head.
        if public.len() > em_base.len() + KEPT_BASE_SLACK {
            return None;
        }
        let (base, made_at, whole, body, etag) =
            &**self.wholes[usize::from(xml)].get_or_init(|| {
                let (_, head) = self.answer(xml, public, em_base);
                // Kept for the entry's life: a clone holds only its headers, where
                // the map `finish` filled has room to spare.
                let whole = finish(head).clone();
                let (body, _, etag) = self.representation(xml, public);
                Box::new((public.into(), at, whole, body, etag))
            });
        if **base != *public || *made_at != at {
            return None;
        }
        Some((body, etag, whole))
    }

    /// `Last-Modified` for an entry fetched at `at` (none before 1970),
    /// formatted on the first hit and kept: an answer belongs to one
    /// entry, and a per-thread memo of the last date formatted misses all
    /// the time when hits go round many entries. Another time than the
    /// kept one is formatted anew.
    pub fn last_modified(&self, at: SystemTime) -> Option<HeaderValue> {
        if let Some((t, v)) = self.modified.get() {
            if *t == at {
                return Some(v.clone());
            }
        }
        at.duration_since(SystemTime::UNIX_EPOCH).ok()?;
        let v = HeaderValue::from_str(&httpdate::fmt_http_date(at)).ok()?;
        let _ = self.modified.set((at, v.clone()));
        Some(v)
    }

    /// The body and `Content-Type` for a client.
    pub fn body_for(&self, xml: bool, public: &str) -> (Bytes, Option<HeaderValue>) {
        let (body, content_type, _) = self.representation(xml, public);
        (body, content_type)
    }

    /// The body, `Content-Type` and strong `ETag` for a client (the tag
    /// differs per representation: JSON in each case, XML, raw).
    pub fn representation(
        &self,
        xml: bool,
        public: &str,
    ) -> (Bytes, Option<HeaderValue>, HeaderValue) {
        match &self.doc {
            Doc::Converted { xml: t, .. } if xml => {
                let (b, tag) = t.render_tagged(public, "x");
                (b, Some(XML), tag)
            }
            Doc::Converted { json: t, .. } => {
                let kind = match self.case {
                    JsonCase::Pascal => "p",
                    JsonCase::Camel => "c",
                };
                let (b, tag) = t.render_tagged(public, kind);
                (b, Some(JSON), tag)
            }
            Doc::Raw {
                bytes,
                content_type,
            } => {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                bytes.hash(&mut h);
                let tag = HeaderValue::from_str(&format!("\"r{:016x}\"", h.finish()))
                    .unwrap_or_else(|_| HeaderValue::from_static("\"r\""));
                (bytes.clone(), content_type.clone(), tag)
            }
            Doc::Empty { xml_doc } => {
                let t = match (xml_doc, xml) {
                    (false, _) => None,
                    (true, true) => Some(XML),
                    (true, false) => Some(JSON),
                };
                (Bytes::new(), t, HeaderValue::from_static("\"e\""))
            }
        }
    }

    /// The entry as the fleet's shared tier keeps it: everything a hit needs,
    /// ready (a replica that finds it never converts), and when EM gave it.
    pub fn to_shared(&self, fetched: SystemTime) -> Option<Vec<u8>> {
        let wire = wire::Prepared {
            version: wire::VERSION,
            fetched_ms: fetched
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            status: self.status.as_u16(),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                .collect(),
            doc: match &self.doc {
                Doc::Converted { json, xml } => wire::Doc::Converted {
                    json: json.to_wire(),
                    xml: xml.to_wire(),
                },
                Doc::Raw {
                    bytes,
                    content_type,
                } => wire::Doc::Raw {
                    bytes: bytes.to_vec(),
                    content_type: content_type.as_ref().map(|v| v.as_bytes().to_vec()),
                },
                Doc::Empty { xml_doc } => wire::Doc::Empty { xml_doc: *xml_doc },
            },
        };
        postcard::to_stdvec(&wire).ok()
    }

    /// An entry of the shared tier, and when EM gave it; `None` for bytes
    /// of another version or damaged ones (then EM is asked).
    ///
    /// The fleet's MAC already vouches for the bytes; what they say is
    /// still bounded here, so no value can do more than EM's own answer
    /// could: a fetch time is never in the future (an entry is never
    /// fresher than new), a template always has a piece, and a type is
    /// one emgate itself would give.
    pub fn from_shared(bytes: &[u8], case: JsonCase) -> Option<(Prepared, SystemTime)> {
        let wire: wire::Prepared = postcard::from_bytes(bytes).ok()?;
        if wire.version != wire::VERSION {
            return None;
        }
        let mut headers = HeaderMap::new();
        for (k, v) in wire.headers {
            let name = HeaderName::from_bytes(k.as_bytes()).ok()?;
            // Only what a client may get, whatever the bytes say.
            if FROM_EM.contains(&name) {
                headers.append(name, HeaderValue::from_bytes(&v).ok()?);
            }
        }
        let doc = match wire.doc {
            wire::Doc::Converted { json, xml } => Doc::Converted {
                json: Template::from_wire(json)?,
                xml: Template::from_wire(xml)?,
            },
            wire::Doc::Raw {
                bytes,
                content_type,
            } => Doc::Raw {
                bytes: Bytes::from(bytes),
                content_type: content_type
                    .and_then(|v| HeaderValue::from_bytes(&v).ok())
                    .map(|v| raw_content_type(&v)),
            },
            wire::Doc::Empty { xml_doc } => Doc::Empty { xml_doc },
        };
        Some((
            Prepared {
                status: StatusCode::from_u16(wire.status).ok()?,
                headers,
                doc,
                case,
                modified: OnceLock::new(),
                wholes: Default::default(),
            },
            (SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(wire.fetched_ms))
                .min(SystemTime::now()),
        ))
    }
}

/// The type a raw (not XML) answer is served with: EM's own when it is one
/// of the plain types EM sends for files and text, else
/// `application/octet-stream`, so no stored answer can be served as a page
/// (HTML, SVG, script) on the gateway's origin.
pub fn raw_content_type(em: &HeaderValue) -> HeaderValue {
    const PLAIN: &[&str] = &[
        "application/octet-stream",
        "application/json",
        "application/xml",
        "text/xml",
        "text/plain",
        "text/csv",
        "application/zip",
        "application/pdf",
    ];
    let essence = em
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    match essence {
        Some(e) if PLAIN.contains(&e.as_str()) => em.clone(),
        _ => HeaderValue::from_static("application/octet-stream"),
    }
}

/// The shared tier's form of a prepared answer (postcard-encoded).
mod wire {
    /// Bumped whenever the form changes: replicas of another version ask EM.
    pub const VERSION: u8 = 1;

    #[derive(serde::Serialize, serde::Deserialize)]
    pub struct Template {
        pub parts: Vec<Vec<u8>>,
        pub needle_len: u32,
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    pub enum Doc {
        Converted {
            json: Template,
            xml: Template,
        },
        Raw {
            bytes: Vec<u8>,
            content_type: Option<Vec<u8>>,
        },
        Empty {
            xml_doc: bool,
        },
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    pub struct Prepared {
        pub version: u8,
        pub fetched_ms: u64,
        pub status: u16,
        pub headers: Vec<(String, Vec<u8>)>,
        pub doc: Doc,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_answers_are_private_unsniffed_and_of_a_type_the_gateway_made() {
        let finished = |pairs: &[(HeaderName, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(k.clone(), HeaderValue::from_static(v));
            }
            api_headers(&mut h);
            h
        };
        let h = finished(&[(CONTENT_TYPE, "application/json; charset=utf-8")]);
        assert_eq!(h[header::CACHE_CONTROL], "private");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[CONTENT_TYPE], JSON);
        let h = finished(&[
            (header::CACHE_CONTROL, "public, max-age=600"),
            (CONTENT_TYPE, "text/html"),
        ]);
        assert_eq!(h[header::CACHE_CONTROL], "private");
        assert_eq!(h[CONTENT_TYPE], BYTES);
        for kept in ["no-store", "private, max-age=5", "max-age=0, No-Store"] {
            let h = finished(&[(header::CACHE_CONTROL, kept)]);
            assert_eq!(h[header::CACHE_CONTROL], kept);
        }
        let h = finished(&[(header::CACHE_CONTROL, "no-cache")]);
        assert_eq!(h[header::CACHE_CONTROL], "private, no-cache");
        assert!(!finished(&[]).contains_key(CONTENT_TYPE));
    }

    #[test]
    fn templates_fill_every_gap_with_the_clients_base() {
        let doc =
            Bytes::from_static(b"{\"Href\":\"https://em:9398/api/a\",\"X\":\"https://em:9398\"}");
        let t = Template::split(doc, "https://em:9398");
        assert_eq!(
            t.render("http://gw"),
            Bytes::from_static(b"{\"Href\":\"http://gw/api/a\",\"X\":\"http://gw\"}")
        );
        // The second client with another base gets its own links too.
        assert_eq!(
            t.render("https://other"),
            Bytes::from_static(b"{\"Href\":\"https://other/api/a\",\"X\":\"https://other\"}")
        );
        assert_eq!(
            t.render("http://gw"),
            Bytes::from_static(b"{\"Href\":\"http://gw/api/a\",\"X\":\"http://gw\"}")
        );
        let plain = Template::split(Bytes::from_static(b"no urls"), "https://em:9398");
        assert_eq!(plain.render("http://gw"), Bytes::from_static(b"no urls"));
    }

    #[test]
    fn links_come_from_checked_hosts_only() {
        let env = |k: &str| match k {
            "EMGATE_UPSTREAM_URL" => Some("https://em:9398".to_string()),
            "EMGATE_UPSTREAM_USERNAME" => Some("u".to_string()),
            "EMGATE_UPSTREAM_PASSWORD" => Some("p".to_string()),
            _ => None,
        };
        let settings = Settings::load(&crate::config::Sources {
            file: None,
            demo: &[],
            env: &env,
        })
        .unwrap();
        let bound: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        let host = Authority::parse("gw.example:8080");
        let mut headers = HeaderMap::new();
        assert_eq!(
            &*public_base(&settings, host.as_ref(), &headers, false, bound),
            "http://gw.example:8080"
        );
        assert_eq!(
            &*public_base(&settings, None, &headers, true, bound),
            "https://127.0.0.1:4242"
        );
        // Forwarded headers count only when trusted.
        headers.insert("x-forwarded-host", "other.example".parse().unwrap());
        assert_eq!(
            &*public_base(&settings, host.as_ref(), &headers, false, bound),
            "http://gw.example:8080"
        );
        let mut trusting = settings.clone();
        trusting.listen.trust_forwarded = true;
        assert_eq!(
            &*public_base(&trusting, host.as_ref(), &headers, false, bound),
            "http://other.example"
        );
        // The same base again is the one made before; another host its own.
        let (a, b) = (
            public_base(&settings, host.as_ref(), &HeaderMap::new(), false, bound),
            public_base(&settings, host.as_ref(), &HeaderMap::new(), false, bound),
        );
        assert!(Arc::ptr_eq(&a, &b));
        let other = Authority::parse("gw2.example:8080");
        assert_eq!(
            &*public_base(&settings, other.as_ref(), &HeaderMap::new(), false, bound),
            "http://gw2.example:8080"
        );
        assert_eq!(
            &*public_base(&settings, host.as_ref(), &HeaderMap::new(), true, bound),
            "https://gw.example:8080"
        );
        headers.insert("x-forwarded-host", "evil\"/><x".parse().unwrap());
        assert_eq!(
            &*public_base(&trusting, host.as_ref(), &headers, false, bound),
            "http://gw.example:8080"
        );
    }

    /// EM's answer with one reference, a `Location` on EM, and `extra` headers.
    fn em_references(extra: &[(HeaderName, &'static str)]) -> UpstreamResponse {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/xml"));
        headers.insert(
            header::LOCATION,
            HeaderValue::from_static("https://em:9398/api/x"),
        );
        for (name, value) in extra {
            headers.append(name.clone(), HeaderValue::from_static(value));
        }
        UpstreamResponse {
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(
                b"<EntityReferences xmlns=\"http://www.veeam.com/ent/v1.0\"><Ref Href=\"https://em:9398/api/a\" Name=\"n\"/></EntityReferences>",
            ),
            elapsed: std::time::Duration::ZERO,
            held: Default::default(),
        }
    }

    #[test]
    fn a_kept_head_is_the_head_of_its_own_representation_and_base_only() {
        let em = em_references(&[(header::ALLOW, "GET"), (header::ALLOW, "DELETE")]);
        let p = Prepared::from_em(&em, "https://em:9398", JsonCase::Pascal).unwrap();
        let em_base = "https://em:9398";
        for _ in 0..2 {
            // Made, then kept: the same answers both times.
            let (json, head) = p.answer(false, "http://gw", em_base);
            assert_eq!(head[CONTENT_TYPE], JSON);
            assert_eq!(head[header::LOCATION], "http://gw/api/x");
            assert_eq!(head.get_all(header::ALLOW).iter().count(), 2);
            assert_eq!(head[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(head[header::CACHE_CONTROL], "private");
            assert_eq!(head[header::ETAG], p.representation(false, "http://gw").2);
            assert!(std::str::from_utf8(&json)
                .unwrap()
                .contains("http://gw/api/a"));
            let (_, xml_head) = p.answer(true, "http://gw", em_base);
            assert_eq!(xml_head[CONTENT_TYPE], XML);
            assert_ne!(xml_head[header::ETAG], head[header::ETAG]);
            // Another name of the gateway gets its own links and tag.
            let (other, other_head) = p.answer(false, "https://gw.example", em_base);
            assert_eq!(other_head[header::LOCATION], "https://gw.example/api/x");
            assert_ne!(other_head[header::ETAG], head[header::ETAG]);
            assert!(std::str::from_utf8(&other)
                .unwrap()
                .contains("https://gw.example/api/a"));
        }
    }

    #[test]
    fn a_shared_entry_comes_back_as_it_went_and_serves_without_converting() {
        let em = em_references(&[]);
        let p = Prepared::from_em(&em, "https://em:9398", JsonCase::Camel).unwrap();
        let when = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let bytes = p.to_shared(when).unwrap();
        let (back, at) = Prepared::from_shared(&bytes, JsonCase::Camel).unwrap();
        assert_eq!(at, when);
        assert_eq!(back.status, StatusCode::OK);
        for xml in [false, true] {
            let (a, ta, ea) = p.representation(xml, "http://gw");
            let (b, tb, eb) = back.representation(xml, "http://gw");
            assert_eq!((a, ta, ea), (b, tb, eb));
        }
        assert_eq!(
            back.answer(false, "http://gw", "https://em:9398").1[header::LOCATION],
            "http://gw/api/x"
        );
        assert!(Prepared::from_shared(b"garbage", JsonCase::Camel).is_none());
        let mut other_version = bytes.clone();
        other_version[0] = 99;
        assert!(Prepared::from_shared(&other_version, JsonCase::Camel).is_none());
    }

    #[test]
    fn a_shared_entry_can_say_no_more_than_an_answer_of_ems() {
        let wire_of = |doc: wire::Doc, fetched_ms: u64| {
            postcard::to_stdvec(&wire::Prepared {
                version: wire::VERSION,
                fetched_ms,
                status: 200,
                headers: vec![],
                doc,
            })
            .unwrap()
        };
        // From the future: never fresher than new.
        let future = wire_of(wire::Doc::Empty { xml_doc: false }, u64::MAX / 2);
        let (_, at) = Prepared::from_shared(&future, JsonCase::Pascal).unwrap();
        assert!(at <= SystemTime::now());
        // A template without pieces would not render: refused, no panic.
        let empty = wire::Template {
            parts: vec![],
            needle_len: 0,
        };
        let hollow = wire_of(
            wire::Doc::Converted {
                json: empty,
                xml: wire::Template {
                    parts: vec![b"<x/>".to_vec()],
                    needle_len: 0,
                },
            },
            0,
        );
        assert!(Prepared::from_shared(&hollow, JsonCase::Pascal).is_none());
        // A page on the gateway's origin: served as bytes, not HTML.
        let page = wire_of(
            wire::Doc::Raw {
                bytes: b"<script>alert(1)</script>".to_vec(),
                content_type: Some(b"text/html".to_vec()),
            },
            0,
        );
        let (p, _) = Prepared::from_shared(&page, JsonCase::Pascal).unwrap();
        let (_, t, _) = p.representation(false, "http://gw");
        assert_eq!(t.unwrap(), "application/octet-stream");
        let csv = HeaderValue::from_static("text/csv; charset=utf-8");
        assert_eq!(raw_content_type(&csv), csv);
    }

    #[test]
    fn em_headers_reach_clients_by_allow_list_with_locations_rewritten() {
        let mut em = HeaderMap::new();
        em.insert(header::SERVER, "Microsoft-HTTPAPI/2.0".parse().unwrap());
        em.insert("x-powered-by", "ASP.NET".parse().unwrap());
        em.insert(
            header::SET_COOKIE,
            "X-RestSvcSessionId=abc".parse().unwrap(),
        );
        em.insert("x-restsvcsessionid", "abc".parse().unwrap());
        em.insert(header::WWW_AUTHENTICATE, "Basic".parse().unwrap());
        em.insert(header::ETAG, "\"em\"".parse().unwrap());
        em.insert(
            header::LOCATION,
            "https://EM:9398/api/tasks/task-1".parse().unwrap(),
        );
        em.insert(
            header::CONTENT_LOCATION,
            "https://elsewhere/api/x".parse().unwrap(),
        );
        em.insert(header::RETRY_AFTER, "5".parse().unwrap());
        let out = client_headers(&em, "https://em:9398", "http://gw:9399");
        let mut names: Vec<_> = out.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["content-location", "location", "retry-after"]);
        assert_eq!(out[header::LOCATION], "http://gw:9399/api/tasks/task-1");
        assert_eq!(out[header::CONTENT_LOCATION], "https://elsewhere/api/x");
    }
}
