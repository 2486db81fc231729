//! Cross-origin access for browser apps (`--allow-origin`), both servers.
//!
//! A request on the public listener whose `Origin` is allowed gets
//! `Access-Control-Allow-Origin` on its response (and on the later answer of a parked
//! poll), so a page on another origin can read it with `fetch` or `EventSource`; a
//! preflight (`OPTIONS` on `/sub/…`) is answered with the methods and headers a
//! subscriber may use. A request from any other origin gets no CORS headers (the
//! browser then refuses to hand the response to the page).
//!
//! Configured origins are matched exactly (scheme, host and port; ASCII case folded) and
//! echoed with `Vary: Origin`; with subscriber tokens on they also get
//! `Access-Control-Allow-Credentials: true`, so a cookie token can ride along
//! (`withCredentials` / `credentials: "include"`). `*` allows every origin without
//! credentials, as the CORS rules require: such pages pass the token in `?token=` or in
//! `Authorization`.
//!
//! Cost: the header lines for each allowed origin are rendered once at start-up; a
//! request is matched by a scan of the list, and a parked poll remembers only the
//! origin's index ([`Cors::lookup`]), never the string.

/// Headers a cross-origin page may read: what a long-poll client needs to resume.
pub const EXPOSE_HEADERS: &str = "Message-Id, Channel, Messages-Lost";
/// Request headers a subscriber may send cross-origin (besides the safelisted ones).
pub const ALLOW_HEADERS: &str = "Authorization, Last-Event-ID";
/// How long a browser may cache a preflight's answer, in seconds.
pub const MAX_AGE_SECS: u32 = 600;
/// Most `--allow-origin` values.
pub const MAX_ORIGINS: usize = 256;

/// The allowed origins and the header lines rendered for each.
#[derive(Debug, Clone)]
pub struct Cors {
    /// `*` was given: every origin, no credentials.
    any: bool,
    /// Listed origins, lower-case, in flag order.
    origins: Vec<Box<str>>,
    /// Per allowed index (`lookup() - 1`): the response header pairs.
    headers: Vec<Vec<(&'static str, Box<str>)>>,
    /// The same as raw header lines, for the mio server's renderer.
    lines: Vec<Box<[u8]>>,
    /// Per allowed index: the preflight answer's lines (the above, plus methods,
    /// headers and max age).
    preflight: Vec<Box<[u8]>>,
}

impl Cors {
    /// Builds the policy from the `--allow-origin` values (`None` when there are none).
    /// `credentials`: cookie tokens are in use (`--subscribe-key`), so listed origins
    /// also get `Access-Control-Allow-Credentials: true`.
    pub fn new(values: &[String], credentials: bool) -> Result<Option<Cors>, String> {
        if values.is_empty() {
            return Ok(None);
        }
        if values.len() > MAX_ORIGINS {
            return Err(format!(
                "--allow-origin: at most {MAX_ORIGINS} origins (or `*`)"
            ));
        }
        let any = values.iter().any(|v| v == "*");
        if any && values.len() > 1 {
            return Err("--allow-origin: `*` allows every origin; give it alone".into());
        }
        let mut origins: Vec<Box<str>> = Vec::new();
        if !any {
            for v in values {
                let o = check_origin(v).map_err(|why| format!("--allow-origin {v:?}: {why}"))?;
                if !origins.contains(&o) {
                    origins.push(o);
                }
            }
        }
        let allowed: Vec<&str> = if any {
            vec!["*"]
        } else {
            origins.iter().map(|o| &**o).collect()
        };
        let mut headers = Vec::new();
        let mut lines = Vec::new();
        let mut preflight = Vec::new();
        for o in allowed {
            let mut h: Vec<(&'static str, Box<str>)> =
                vec![("Access-Control-Allow-Origin", o.into())];
            if !any {
                h.push(("Vary", "Origin".into()));
                if credentials {
                    h.push(("Access-Control-Allow-Credentials", "true".into()));
                }
            }
            h.push(("Access-Control-Expose-Headers", EXPOSE_HEADERS.into()));
            let render = |h: &[(&str, Box<str>)]| -> Box<[u8]> {
                h.iter()
                    .map(|(n, v)| format!("{n}: {v}\r\n"))
                    .collect::<String>()
                    .into_bytes()
                    .into()
            };
            lines.push(render(&h));
            let mut p = h.clone();
            p.extend(Self::preflight_headers().map(|(n, v)| (n, v.into())));
            preflight.push(render(&p));
            headers.push(h);
        }
        Ok(Some(Cors {
            any,
            origins,
            headers,
            lines,
            preflight,
        }))
    }

    /// Which allowed origin a request's `Origin` is: `0` for none (no `Origin`, or one
    /// not allowed), else its index plus one — what a parked poll keeps.
    pub fn lookup(&self, origin: Option<&[u8]>) -> u32 {
        let Some(origin) = origin else {
            return 0;
        };
        if self.any {
            return 1;
        }
        self.origins
            .iter()
            .position(|o| o.as_bytes().eq_ignore_ascii_case(origin))
            .map_or(0, |i| i as u32 + 1)
    }

    /// The response header lines (`Name: value\r\n` each) for allowed origin `ix`
    /// (from [`Cors::lookup`]); empty for `0`.
    pub fn lines(&self, ix: u32) -> &[u8] {
        match ix {
            0 => b"",
            i => self.lines.get(i as usize - 1).map_or(&[][..], |l| &l[..]),
        }
    }

    /// The same as `(name, value)` pairs.
    pub fn headers(&self, ix: u32) -> &[(&'static str, Box<str>)] {
        match ix {
            0 => &[],
            i => self.headers.get(i as usize - 1).map_or(&[][..], |h| &h[..]),
        }
    }

    /// The header lines of a preflight's answer for `ix`: [`Cors::lines`] plus the
    /// methods, headers and max age ([`Cors::preflight_headers`]).
    pub fn preflight_lines(&self, ix: u32) -> &[u8] {
        match ix {
            0 => b"",
            i => self
                .preflight
                .get(i as usize - 1)
                .map_or(&[][..], |l| &l[..]),
        }
    }

    /// What a preflight's answer adds to [`Cors::headers`].
    pub fn preflight_headers() -> [(&'static str, String); 3] {
        [
            ("Access-Control-Allow-Methods", "GET".into()),
            ("Access-Control-Allow-Headers", ALLOW_HEADERS.into()),
            ("Access-Control-Max-Age", MAX_AGE_SECS.to_string()),
        ]
    }
}

/// Checks one `--allow-origin` value: `scheme://host[:port]`, nothing after (an origin
/// has no path). Returns it in lower case, as browsers send it.
fn check_origin(v: &str) -> Result<Box<str>, &'static str> {
    let Some((scheme, rest)) = v.split_once("://") else {
        return Err("an origin is scheme://host[:port], e.g. https://app.example.com");
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if !scheme_ok {
        return Err("bad scheme");
    }
    if rest.is_empty() {
        return Err("no host");
    }
    if rest.contains('/') || rest.contains('?') || rest.contains('#') {
        return Err("an origin has no path (drop the trailing part, even a lone /)");
    }
    if !rest
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
    {
        return Err("bad host");
    }
    // `host`, `host:port`, `[v6]`, `[v6]:port`.
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => {
            let (addr, tail) = v6.split_once(']').ok_or("bad host")?;
            if tail.is_empty() {
                (addr, None)
            } else {
                (addr, Some(tail.strip_prefix(':').ok_or("bad host")?))
            }
        }
        None => match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        },
    };
    if host.is_empty() {
        return Err("no host");
    }
    if port.is_some_and(|p| {
        p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.parse::<u16>().is_err()
    }) {
        return Err("bad port");
    }
    // A browser leaves the scheme's default port out of `Origin`: such an entry would
    // never match.
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    };
    if port
        .and_then(|p| p.parse::<u16>().ok())
        .is_some_and(|p| Some(p) == default)
    {
        return Err("drop the default port: a browser sends the origin without it");
    }
    Ok(v.to_ascii_lowercase().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(v: &[&str], cred: bool) -> Cors {
        let v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        Cors::new(&v, cred).unwrap().unwrap()
    }

    #[test]
    fn listed_origins_are_matched_exactly_and_echoed() {
        let c = cors(&["https://app.example.com", "http://127.0.0.2:8080"], true);
        assert_eq!(c.lookup(Some(b"https://app.example.com")), 1);
        assert_eq!(c.lookup(Some(b"HTTPS://APP.example.com")), 1);
        assert_eq!(c.lookup(Some(b"http://127.0.0.2:8080")), 2);
        for no in [
            &b"https://app.example.com:443"[..],
            b"http://app.example.com",
            b"https://app.example.com.evil",
            b"https://evil.app.example.com",
            b"null",
            b"",
        ] {
            assert_eq!(c.lookup(Some(no)), 0, "{}", String::from_utf8_lossy(no));
        }
        assert_eq!(c.lookup(None), 0);
        let l = String::from_utf8(c.lines(2).to_vec()).unwrap();
        assert!(l.starts_with("Access-Control-Allow-Origin: http://127.0.0.2:8080\r\n"));
        assert!(l.contains("Vary: Origin\r\n") && l.contains("Allow-Credentials: true\r\n"));
        assert!(l.contains("Access-Control-Expose-Headers: Message-Id"));
        assert!(c.lines(0).is_empty() && c.headers(0).is_empty());
        let p = String::from_utf8(c.preflight_lines(1).to_vec()).unwrap();
        assert!(
            p.contains("Allow-Headers: Authorization, Last-Event-ID\r\n"),
            "{p}"
        );
        assert!(p.starts_with("Access-Control-Allow-Origin: https://app.example.com\r\n"));
        let no_cred = cors(&["https://a.example"], false);
        assert!(!String::from_utf8_lossy(no_cred.lines(1)).contains("Credentials"));
    }

    #[test]
    fn star_allows_every_origin_without_credentials() {
        let c = cors(&["*"], true);
        assert_eq!(c.lookup(Some(b"https://anything.example")), 1);
        assert_eq!(c.lookup(None), 0);
        let l = String::from_utf8(c.lines(1).to_vec()).unwrap();
        assert!(l.starts_with("Access-Control-Allow-Origin: *\r\n"));
        assert!(!l.contains("Credentials") && !l.contains("Vary"));
    }

    #[test]
    fn bad_origins_are_refused_with_a_reason() {
        let bad = |v: &[&str]| {
            let v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
            Cors::new(&v, false).unwrap_err()
        };
        assert!(bad(&["https://a.example/"]).contains("no path"));
        assert!(bad(&["a.example"]).contains("scheme://host"));
        assert!(bad(&["*", "https://a.example"]).contains("alone"));
        assert!(bad(&["https://a.example:99999"]).contains("port"));
        assert!(bad(&["https://a.example:443"]).contains("default port"));
        assert!(bad(&["http://a.example:80"]).contains("default port"));
        assert!(bad(&["https://"]).contains("no host"));
        assert!(bad(&["https://a b"]).contains("host"));
        assert!(Cors::new(&[], false).unwrap().is_none());
        let ok = cors(
            &["http://[::1]:8080", "http://[::1]", "https://A.example"],
            false,
        );
        assert_eq!(ok.lookup(Some(b"https://a.example")), 3);
    }
}
