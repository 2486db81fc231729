//! CORS on the public listener (`--allow-origin`): holdfast's policy, its headers parsed
//! for hyper once at start-up.
//!
//! Which origins are allowed and what each one's answers carry come from
//! [`holdfast::cors::Cors`], shared with holdfast. This wrapper only turns those
//! `(name, value)` pairs into `HeaderName`/`HeaderValue`s up front, so a request from an
//! allowed origin costs a scan of the list and a few reference-count clones, never a
//! header parse. The service looks the request's `Origin` up before routing and adds
//! the origin's headers to whatever the route answers (a parked poll's answer and a
//! stream's head included); a preflight (`OPTIONS /sub/…`) is answered here.

use holdfast::cors::Cors;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};

use crate::respond::{self, Body};

type Pairs = Box<[(HeaderName, HeaderValue)]>;

/// The `--allow-origin` policy with its headers ready for hyper.
pub struct CorsHeaders {
    policy: Cors,
    /// Per allowed origin (index `lookup() - 1`): the headers every answer carries.
    per_origin: Vec<Pairs>,
    /// What a preflight's answer adds to those.
    preflight: Pairs,
}

fn parse(
    pairs: impl IntoIterator<Item = (&'static str, impl AsRef<str>)>,
) -> Result<Pairs, String> {
    pairs
        .into_iter()
        .map(|(name, value)| {
            let value = value.as_ref();
            Ok((
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|e| format!("CORS header name {name:?}: {e}"))?,
                HeaderValue::from_str(value)
                    .map_err(|e| format!("CORS header {name}: {value:?}: {e}"))?,
            ))
        })
        .collect()
}

impl CorsHeaders {
    pub fn new(policy: Cors) -> Result<CorsHeaders, String> {
        // Allowed origins are numbered from 1; the first index with no headers is past
        // the end.
        let per_origin = (1..)
            .map(|ix| policy.headers(ix))
            .take_while(|h| !h.is_empty())
            .map(|h| parse(h.iter().map(|(n, v)| (*n, &**v))))
            .collect::<Result<_, _>>()?;
        let preflight = parse(Cors::preflight_headers())?;
        Ok(CorsHeaders {
            policy,
            per_origin,
            preflight,
        })
    }

    /// Which allowed origin a request comes from (`0`: none, or not allowed).
    pub fn lookup(&self, origin: Option<&[u8]>) -> u32 {
        self.policy.lookup(origin)
    }

    /// Adds the headers of allowed origin `ix` (nothing for `0`).
    pub fn add(&self, ix: u32, headers: &mut HeaderMap) {
        let Some(pairs) = (ix as usize)
            .checked_sub(1)
            .and_then(|i| self.per_origin.get(i))
        else {
            return;
        };
        for (name, value) in pairs.iter() {
            headers.append(name.clone(), value.clone());
        }
    }

    /// The answer to `OPTIONS /sub/…` from origin `ix`: `204` with the methods and
    /// headers a subscriber may use (the service then adds [`CorsHeaders::add`]'s), or
    /// `403` for an origin not allowed.
    pub fn preflight(&self, ix: u32) -> Response<Body> {
        if ix == 0 {
            return respond::text(StatusCode::FORBIDDEN, "origin not allowed\n");
        }
        let mut r = respond::no_content();
        let h = r.headers_mut();
        h.insert(header::ALLOW, HeaderValue::from_static("GET, OPTIONS"));
        for (name, value) in self.preflight.iter() {
            h.append(name.clone(), value.clone());
        }
        r
    }
}

/// The request's `Origin`: the last one, as holdfast's head parser takes it.
pub fn origin(headers: &HeaderMap) -> Option<&[u8]> {
    headers
        .get_all(header::ORIGIN)
        .iter()
        .next_back()
        .map(HeaderValue::as_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str], credentials: bool) -> CorsHeaders {
        let v: Vec<String> = origins.iter().map(|s| s.to_string()).collect();
        let policy = Cors::new(&v, credentials).unwrap().unwrap();
        CorsHeaders::new(policy).unwrap()
    }

    #[test]
    fn every_allowed_origin_gets_its_own_headers() {
        let c = cors(&["https://a.example", "http://b.example:8080"], true);
        assert_eq!(c.per_origin.len(), 2);
        let mut h = HeaderMap::new();
        c.add(c.lookup(Some(b"http://b.example:8080")), &mut h);
        assert_eq!(h["access-control-allow-origin"], "http://b.example:8080");
        assert_eq!(h["vary"], "Origin");
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(
            h["access-control-expose-headers"],
            "Message-Id, Channel, Messages-Lost"
        );
        let mut none = HeaderMap::new();
        c.add(c.lookup(Some(b"https://evil.example")), &mut none);
        c.add(c.lookup(None), &mut none);
        assert!(none.is_empty());
    }

    #[test]
    fn a_preflight_is_204_for_an_allowed_origin_and_403_otherwise() {
        let c = cors(&["*"], true);
        let ok = c.preflight(c.lookup(Some(b"https://x.example")));
        assert_eq!(ok.status(), StatusCode::NO_CONTENT);
        assert_eq!(ok.headers()["allow"], "GET, OPTIONS");
        assert_eq!(ok.headers()["access-control-allow-methods"], "GET");
        assert_eq!(
            ok.headers()["access-control-allow-headers"],
            "Authorization, Last-Event-ID"
        );
        assert_eq!(ok.headers()["access-control-max-age"], "600");
        let mut h = HeaderMap::new();
        c.add(1, &mut h);
        assert_eq!(h["access-control-allow-origin"], "*");
        assert!(!h.contains_key("access-control-allow-credentials"));
        let no = c.preflight(c.lookup(None));
        assert_eq!(no.status(), StatusCode::FORBIDDEN);
        assert!(no.headers().get("access-control-allow-origin").is_none());
    }
}
