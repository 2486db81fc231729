//! Access control both servers share.
//!
//! - The admin secret (`--admin-token-file`): every admin request but `/health` must
//!   carry `Authorization: Bearer <secret>`. The secret is read once at start-up; a
//!   request's header is compared with it in constant time (the time taken does not
//!   depend on where the first differing byte is), so it cannot be guessed a byte at a
//!   time from response times.
//! - Subscriber tokens (`--subscribe-key`, [`SubscribeKey`]): JWTs checked with the
//!   `jsonwebtoken` crate against an HMAC secret or an RSA / EC public key. The key's
//!   family fixes the algorithms accepted, so an HS token checked against a public key
//!   (algorithm confusion) and `alg: none` are refused; `exp` is required; the
//!   `channels` claim lists exact names and prefixes ending in `*`. A subscribe's token
//!   is found by [`find_token`] and checked once, by [`SubscribeKey::check`], before
//!   anything parks; the connection keeps only its expiry.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// Longest admin secret accepted (a header line must carry it).
pub const MAX_ADMIN_TOKEN: usize = 1024;

/// The admin secret.
#[derive(Clone)]
pub struct AdminToken(Box<[u8]>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(…)")
    }
}

impl AdminToken {
    /// Reads the secret from `path`: the file's contents without one trailing newline
    /// (`\n` or `\r\n`). Refused: an unreadable file, an empty secret, one longer than
    /// [`MAX_ADMIN_TOKEN`], or one with bytes a header value cannot carry (controls,
    /// spaces, non-ASCII).
    pub fn load(path: &Path) -> Result<AdminToken, String> {
        let bytes = std::fs::read(path)
            .map_err(|e| format!("--admin-token-file {}: {e}", path.display()))?;
        Self::from_file_contents(&bytes)
            .map_err(|why| format!("--admin-token-file {}: {why}", path.display()))
    }

    fn from_file_contents(bytes: &[u8]) -> Result<AdminToken, &'static str> {
        let t = bytes
            .strip_suffix(b"\r\n")
            .or_else(|| bytes.strip_suffix(b"\n"))
            .unwrap_or(bytes);
        if t.is_empty() {
            return Err("the file is empty");
        }
        if t.len() > MAX_ADMIN_TOKEN {
            return Err("the token is longer than 1024 bytes");
        }
        if !t.iter().all(|b| b.is_ascii_graphic()) {
            return Err("the token must be printable ASCII without spaces (one line)");
        }
        Ok(AdminToken(t.into()))
    }

    /// Whether an `Authorization` header value grants admin access: `Bearer` (any
    /// case), one or more spaces, then exactly the secret.
    pub fn allows(&self, authorization: Option<&[u8]>) -> bool {
        match authorization.and_then(bearer) {
            Some(given) => constant_time_eq(given, &self.0),
            None => false,
        }
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    // Keep the fold from being turned into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

/// Shortest HMAC secret accepted for subscriber tokens: RFC 7518 §3.2 asks for a key
/// at least as long as the hash (32 bytes for HS256).
pub const MIN_HMAC_SECRET: usize = 32;

/// Smallest RSA key accepted for subscriber tokens (NIST SP 800-131A).
pub const MIN_RSA_BITS: usize = 2048;

/// DER of the named-curve OIDs: P-256 (1.2.840.10045.3.1.7), P-384 (1.3.132.0.34).
const P256_OID: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
const P384_OID: &[u8] = &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The DER bytes of the first PEM block in `text`.
fn pem_body(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let b64: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .map(str::trim)
        .collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// One DER element: (tag, contents, what follows).
fn der_element(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7F) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |l, &b| (l << 8) | b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The size of an RSA public key's modulus in bits, from a SubjectPublicKeyInfo (or,
/// `pkcs1`, an `RSAPublicKey`) in DER.
fn rsa_modulus_bits(der: &[u8], pkcs1: bool) -> Option<usize> {
    let (_, mut body, _) = der_element(der)?;
    if !pkcs1 {
        let (_, _, rest) = der_element(body)?; // AlgorithmIdentifier
        let (tag, bits, _) = der_element(rest)?;
        if tag != 0x03 {
            return None;
        }
        let (_, key, _) = der_element(bits.get(1..)?)?; // after the unused-bits byte
        body = key;
    }
    let (tag, n, _) = der_element(body)?;
    if tag != 0x02 {
        return None;
    }
    let n = &n[n.iter().position(|&b| b != 0)?..];
    Some(n.len() * 8 - n[0].leading_zeros() as usize)
}

/// What a subscriber's token was checked with (`--subscribe-key`).
pub struct SubscribeKey {
    key: DecodingKey,
    validation: Validation,
    /// `HMAC`, `RSA` or `EC`, for messages.
    family: &'static str,
}

impl std::fmt::Debug for SubscribeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SubscribeKey({})", self.family)
    }
}

/// Why a token was refused (`401`), in words for the `WWW-Authenticate` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Missing,
    Malformed,
    BadSignature,
    Expired,
    NotYetValid,
    /// No `exp`, or a `channels` claim that is not a list of names and prefixes.
    BadClaims,
}

impl TokenError {
    pub fn describe(self) -> &'static str {
        match self {
            TokenError::Missing => "token required",
            TokenError::Malformed => "malformed token",
            TokenError::BadSignature => "bad signature or algorithm",
            TokenError::Expired => "token expired",
            TokenError::NotYetValid => "token not yet valid",
            TokenError::BadClaims => "bad claims (exp and channels are required)",
        }
    }
}

/// What a valid token grants: channel names and prefixes (`user.42.*`; `*` alone is
/// every channel), until `exp` (seconds since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub channels: Vec<String>,
    pub exp: u64,
}

impl Grant {
    /// Whether the grant covers channel `name`: an exact entry equal to it, or a
    /// prefix entry (`p*`) it starts with. `priv` does not cover `private`.
    pub fn covers(&self, name: &str) -> bool {
        self.channels.iter().any(|g| match g.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => g == name,
        })
    }

    /// Whether it covers every one of `names`.
    pub fn covers_all(&self, names: &[&str]) -> bool {
        names.iter().all(|n| self.covers(n))
    }
}

/// Why a subscribe was refused: `401` (no usable token) or `403` (a valid token that
/// does not grant every channel asked for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    Token(TokenError),
    /// The first channel asked for that the token does not grant.
    NotGranted(String),
}

impl Denied {
    pub fn status(&self) -> u16 {
        match self {
            Denied::Token(_) => 401,
            Denied::NotGranted(_) => 403,
        }
    }

    /// The `WWW-Authenticate` value (RFC 6750 §3): no error code when no token came,
    /// `invalid_token` for a bad one, `insufficient_scope` for a missing grant.
    pub fn www_authenticate(&self) -> String {
        match self {
            Denied::Token(TokenError::Missing) => format!("Bearer realm=\"{REALM}\""),
            Denied::Token(e) => format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{}\"",
                e.describe()
            ),
            Denied::NotGranted(_) => {
                format!("Bearer realm=\"{REALM}\", error=\"insufficient_scope\"")
            }
        }
    }

    /// The plain-text body.
    pub fn body(&self) -> String {
        match self {
            Denied::Token(e) => format!("{}\n", e.describe()),
            Denied::NotGranted(ch) => format!("token does not grant channel {ch}\n"),
        }
    }
}

/// The realm named in a subscriber's `WWW-Authenticate`.
pub const REALM: &str = "holdfast";

/// Default `--token-cookie`.
pub const DEFAULT_TOKEN_COOKIE: &str = "holdfast_token";

/// Finds a subscriber's token: `Authorization: Bearer …` first, then the `token` query
/// parameter (EventSource and WebSocket cannot set headers), then the cookie named
/// `cookie_name`. A token is base64url and dots, so the query value is taken as is.
pub fn find_token<'a>(
    authorization: Option<&'a [u8]>,
    query: &'a [u8],
    cookie: Option<&'a [u8]>,
    cookie_name: &str,
) -> Option<&'a [u8]> {
    if let Some(t) = authorization.and_then(bearer) {
        return Some(t);
    }
    if let Some((_, v)) = crate::http::parse::query_pairs(query).find(|(k, _)| *k == b"token") {
        return Some(v);
    }
    cookie?.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (name, value) = (&pair[..eq], &pair[eq + 1..]);
        if name.trim_ascii() != cookie_name.as_bytes() {
            return None;
        }
        let value = value.trim_ascii();
        // RFC 6265 allows a value in double quotes.
        Some(
            value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value),
        )
    })
}

/// The credentials of an `Authorization: Bearer …` value (scheme in any case).
fn bearer(v: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = v.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    Some(rest.trim_ascii()).filter(|t| !t.is_empty())
}

/// Whether a token's header is base64url JSON whose `alg` is a string but not an
/// algorithm `jsonwebtoken` knows (such as `none`).
fn names_unknown_algorithm(token: &[u8]) -> bool {
    use base64::Engine;
    let Some(head) = token.split(|&b| b == b'.').next() else {
        return false;
    };
    let Ok(json) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(head) else {
        return false;
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&json) else {
        return false;
    };
    v.get("alg")
        .and_then(serde_json::Value::as_str)
        .is_some_and(|alg| alg.parse::<Algorithm>().is_err())
}

/// Whether `name` is a valid cookie name (an RFC 6265 token), for `--token-cookie`.
pub fn valid_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl SubscribeKey {
    /// Checks a subscribe: `token` (from [`find_token`]) must be valid and grant every
    /// one of `names`. Returns the token's `exp` (seconds since the Unix epoch): the
    /// stream ends then, and a long-poll is held no longer.
    pub fn check(&self, token: Option<&[u8]>, names: &[&str]) -> Result<u64, Denied> {
        let token = token.ok_or(Denied::Token(TokenError::Missing))?;
        let grant = self.verify(token).map_err(Denied::Token)?;
        if let Some(ch) = names.iter().find(|n| !grant.covers(n)) {
            return Err(Denied::NotGranted(ch.to_string()));
        }
        Ok(grant.exp)
    }

    /// Reads `--subscribe-key`: a PEM public key (`-----BEGIN PUBLIC KEY-----` holding
    /// an RSA or EC P-256/P-384 key, or `-----BEGIN RSA PUBLIC KEY-----`), or else an
    /// HMAC secret (the file's bytes without one trailing newline, at least
    /// [`MIN_HMAC_SECRET`]). A private key is refused (holdfast only verifies).
    /// `leeway_secs` is the clock skew allowed when accepting `exp` and `nbf`.
    pub fn load(path: &Path, leeway_secs: u64) -> Result<SubscribeKey, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("--subscribe-key {}: {e}", path.display()))?;
        Self::from_file_contents(&bytes, leeway_secs)
            .map_err(|why| format!("--subscribe-key {}: {why}", path.display()))
    }

    fn from_file_contents(bytes: &[u8], leeway_secs: u64) -> Result<SubscribeKey, String> {
        let text = std::str::from_utf8(bytes).unwrap_or("");
        let (key, algorithms, family) = if text.contains("-----BEGIN") {
            if text.contains("PRIVATE KEY-----") {
                return Err("a private key: give the public key (holdfast only verifies)".into());
            }
            let der = pem_body(text).ok_or("not a PEM file")?;
            if let Ok(k) = DecodingKey::from_rsa_pem(bytes) {
                let pkcs1 = text.contains("BEGIN RSA PUBLIC KEY");
                let bits = rsa_modulus_bits(&der, pkcs1).ok_or("not an RSA public key")?;
                if bits < MIN_RSA_BITS {
                    return Err(format!(
                        "an RSA key of {bits} bits; at least {MIN_RSA_BITS} are needed"
                    ));
                }
                (
                    k,
                    vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
                    "RSA",
                )
            } else if let Ok(k) = DecodingKey::from_ec_pem(bytes) {
                // The key's curve fixes the one algorithm that can verify with it.
                let alg = if contains(&der, P256_OID) {
                    Algorithm::ES256
                } else if contains(&der, P384_OID) {
                    Algorithm::ES384
                } else {
                    return Err("an EC key on a curve other than P-256 or P-384".into());
                };
                (k, vec![alg], "EC")
            } else {
                return Err("not an RSA or EC public key in PEM form".into());
            }
        } else {
            let secret = bytes
                .strip_suffix(b"\r\n")
                .or_else(|| bytes.strip_suffix(b"\n"))
                .unwrap_or(bytes);
            if secret.len() < MIN_HMAC_SECRET {
                return Err(format!(
                    "an HMAC secret of {} bytes; at least {MIN_HMAC_SECRET} are needed",
                    secret.len()
                ));
            }
            let k = DecodingKey::from_secret(secret).map_err(|e| e.to_string())?;
            (
                k,
                vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
                "HMAC",
            )
        };
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.leeway = leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Ok(SubscribeKey {
            key,
            validation,
            family,
        })
    }

    /// Checks a token and returns what it grants.
    pub fn verify(&self, token: &[u8]) -> Result<Grant, TokenError> {
        use jsonwebtoken::errors::ErrorKind as K;
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &self.key, &self.validation)
            .map_err(|e| match e.kind() {
                K::ExpiredSignature => TokenError::Expired,
                K::ImmatureSignature => TokenError::NotYetValid,
                K::InvalidSignature | K::InvalidAlgorithm | K::InvalidAlgorithmName => {
                    TokenError::BadSignature
                }
                K::MissingRequiredClaim(_) | K::InvalidClaimFormat(_) => TokenError::BadClaims,
                // A well-formed header naming an algorithm the library does not know
                // (`none`, `None`, …) fails to parse there; it is an algorithm refusal.
                _ if names_unknown_algorithm(token) => TokenError::BadSignature,
                _ => TokenError::Malformed,
            })?;
        let claims = data.claims;
        let exp = claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .ok_or(TokenError::BadClaims)?;
        let list = claims
            .get("channels")
            .and_then(serde_json::Value::as_array)
            .ok_or(TokenError::BadClaims)?;
        let mut channels = Vec::with_capacity(list.len());
        for c in list {
            let c = c.as_str().ok_or(TokenError::BadClaims)?;
            let name = c.strip_suffix('*').unwrap_or(c);
            // A prefix may be empty (`*`: every channel); an exact name must be valid.
            let ok =
                (name.is_empty() && c == "*") || crate::store::valid_channel_name(name.as_bytes());
            if !ok {
                return Err(TokenError::BadClaims);
            }
            channels.push(c.to_string());
        }
        Ok(Grant { channels, exp })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_gives_the_secret_without_its_newline() {
        for (file, want) in [
            (&b"s3cret\n"[..], &b"s3cret"[..]),
            (b"s3cret\r\n", b"s3cret"),
            (b"s3cret", b"s3cret"),
        ] {
            assert_eq!(&*AdminToken::from_file_contents(file).unwrap().0, want);
        }
        for bad in [
            &b""[..],
            b"\n",
            b"two words\n",
            b"tab\there",
            b"\xc3\xa9",
            b"a\n\n",
        ] {
            assert!(AdminToken::from_file_contents(bad).is_err(), "{bad:?}");
        }
        assert!(AdminToken::from_file_contents(&[b'x'; 1025]).is_err());
    }

    #[test]
    fn only_the_exact_bearer_secret_is_allowed() {
        let t = AdminToken::from_file_contents(b"s3cret").unwrap();
        for ok in [&b"Bearer s3cret"[..], b"bearer s3cret", b"BEARER   s3cret "] {
            assert!(t.allows(Some(ok)), "{:?}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b"Bearer s3cre"[..],
            b"Bearer s3crett",
            b"Bearer S3CRET",
            b"Basic s3cret",
            b"Bearers3cret",
            b"s3cret",
            b"Bearer",
            b"",
        ] {
            assert!(!t.allows(Some(bad)), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(!t.allows(None));
    }

    use jsonwebtoken::{encode, EncodingKey, Header};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn hs(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET).unwrap(),
        )
        .unwrap()
    }

    fn key() -> SubscribeKey {
        SubscribeKey::from_file_contents(&[SECRET, b"\n"].concat(), 5).unwrap()
    }

    #[test]
    fn a_valid_token_grants_its_channels_exact_and_by_prefix() {
        let t = hs(serde_json::json!({"exp": now() + 60, "channels": ["news", "user.42.*"]}));
        let g = key().verify(t.as_bytes()).unwrap();
        assert!(g.covers("news") && g.covers("user.42.inbox") && g.covers("user.42."));
        assert!(
            !g.covers("newsroom"),
            "an exact grant covers that name only"
        );
        assert!(!g.covers("user.43.inbox") && !g.covers("user.42"));
        assert!(g.covers_all(&["news", "user.42.a"]));
        assert!(!g.covers_all(&["news", "other"]));
        let all = hs(serde_json::json!({"exp": now() + 60, "channels": ["*"]}));
        assert!(key().verify(all.as_bytes()).unwrap().covers("anything"));
    }

    #[test]
    fn bad_tokens_are_refused_with_a_reason() {
        let k = key();
        let ok_claims = serde_json::json!({"exp": now() + 60, "channels": ["a"]});
        let cases = [
            (
                hs(serde_json::json!({"exp": now() - 60, "channels": ["a"]})),
                TokenError::Expired,
            ),
            (
                hs(serde_json::json!({"exp": now() + 60, "nbf": now() + 60, "channels": ["a"]})),
                TokenError::NotYetValid,
            ),
            (
                hs(serde_json::json!({"channels": ["a"]})),
                TokenError::BadClaims,
            ),
            (
                hs(serde_json::json!({"exp": now() + 60})),
                TokenError::BadClaims,
            ),
            (
                hs(serde_json::json!({"exp": now() + 60, "channels": ["bad name"]})),
                TokenError::BadClaims,
            ),
            (
                hs(serde_json::json!({"exp": now() + 60, "channels": "a"})),
                TokenError::BadClaims,
            ),
            (
                encode(
                    &Header::new(Algorithm::HS256),
                    &ok_claims,
                    &EncodingKey::from_secret(b"another secret, also 32 bytes long!").unwrap(),
                )
                .unwrap(),
                TokenError::BadSignature,
            ),
            ("not.a.jwt".to_string(), TokenError::Malformed),
            (String::new(), TokenError::Malformed),
        ];
        for (t, want) in cases {
            assert_eq!(k.verify(t.as_bytes()), Err(want), "{t}");
        }
        // alg: none, with or without a signature: refused.
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims = b64.encode(ok_claims.to_string());
        for header in [r#"{"alg":"none","typ":"JWT"}"#, r#"{"alg":"None"}"#] {
            let t = format!("{}.{claims}.", b64.encode(header));
            assert_eq!(
                k.verify(t.as_bytes()),
                Err(TokenError::BadSignature),
                "{header}"
            );
        }
        // Within the leeway (5 s) an expiry just past is still accepted.
        let t = hs(serde_json::json!({"exp": now() - 2, "channels": ["a"]}));
        assert!(k.verify(t.as_bytes()).is_ok());
    }

    #[test]
    fn keys_are_taken_in_their_forms_and_weak_ones_refused() {
        assert!(SubscribeKey::from_file_contents(b"short secret\n", 0).is_err());
        let private = b"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n";
        let e = SubscribeKey::from_file_contents(private, 0).unwrap_err();
        assert!(e.contains("private"), "{e}");
        let junk = b"-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n";
        assert!(SubscribeKey::from_file_contents(junk, 0).is_err());
    }

    #[test]
    fn the_token_is_found_in_header_then_query_then_cookie() {
        let c = "holdfast_token";
        let f = |a: Option<&'static str>, q: &'static str, k: Option<&'static str>| {
            find_token(a.map(str::as_bytes), q.as_bytes(), k.map(str::as_bytes), c)
                .map(|t| String::from_utf8_lossy(t).into_owned())
        };
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            f(
                Some("Bearer h.h.h"),
                "token=q.q.q",
                Some("holdfast_token=c")
            ),
            s("h.h.h")
        );
        assert_eq!(f(Some("bearer  h.h.h "), "", None), s("h.h.h"));
        assert_eq!(
            f(Some("Basic dXNlcg=="), "a=1&token=q.q.q", None),
            s("q.q.q")
        );
        assert_eq!(
            f(None, "since=5", Some("a=b; holdfast_token=c.c.c; d=e")),
            s("c.c.c")
        );
        assert_eq!(f(None, "", Some("holdfast_token=\"c.c.c\"")), s("c.c.c"));
        assert_eq!(
            f(None, "", Some("xholdfast_token=c; holdfast_tokenx=d")),
            None
        );
        assert_eq!(f(Some("Bearer"), "tokens=x", Some("other=1")), None);
        assert!(valid_cookie_name("holdfast_token") && valid_cookie_name("__Host-t"));
        assert!(!valid_cookie_name("") && !valid_cookie_name("a b") && !valid_cookie_name("a=b"));
    }

    #[test]
    fn a_subscribe_needs_a_token_that_grants_every_channel() {
        let k = key();
        let t = hs(serde_json::json!({"exp": now() + 60, "channels": ["news", "user.42.*"]}));
        let t = Some(t.as_bytes());
        assert_eq!(
            k.check(t, &["news", "user.42.inbox"]).map(|e| e > now()),
            Ok(true)
        );
        let d = k.check(t, &["news", "user.43.inbox"]).unwrap_err();
        assert_eq!(d, Denied::NotGranted("user.43.inbox".into()));
        assert_eq!(d.status(), 403);
        assert!(d.www_authenticate().contains("insufficient_scope"));
        let d = k.check(None, &["news"]).unwrap_err();
        assert_eq!(
            (d.status(), d.www_authenticate()),
            (401, "Bearer realm=\"holdfast\"".into())
        );
        let d = k.check(Some(b"x.y.z"), &["news"]).unwrap_err();
        assert_eq!(d.status(), 401);
        assert!(d.www_authenticate().contains("invalid_token"), "{d:?}");
    }

    #[test]
    fn public_keys_that_cannot_serve_are_refused_and_curves_fix_the_algorithm() {
        let load = |f: &str| {
            let p = format!("{}/tests/assets/jwt/{f}", env!("CARGO_MANIFEST_DIR"));
            SubscribeKey::from_file_contents(&std::fs::read(p).unwrap(), 0)
        };
        let e = load("rsa1024-public.pem").unwrap_err();
        assert!(e.contains("1024 bits"), "{e}");
        let e = load("ec-p521-public.pem").unwrap_err();
        assert!(e.contains("P-256 or P-384"), "{e}");
        assert_eq!(load("rsa-public-pkcs1.pem").unwrap().family, "RSA");
        assert_eq!(
            load("ec-p384-public.pem").unwrap().validation.algorithms,
            [Algorithm::ES384]
        );
        assert_eq!(
            load("ec-public.pem").unwrap().validation.algorithms,
            [Algorithm::ES256]
        );
        assert_eq!(
            rsa_modulus_bits(&pem_body(RSA_PUBLIC).unwrap(), false),
            Some(2048)
        );
    }

    const RSA_PUBLIC: &str = include_str!("../tests/assets/jwt/rsa-public.pem");
    const RSA_PRIVATE: &str = include_str!("../tests/assets/jwt/rsa-private.pem");
    const EC_PUBLIC: &str = include_str!("../tests/assets/jwt/ec-public.pem");
    const EC_PRIVATE: &str = include_str!("../tests/assets/jwt/ec-private.pem");

    #[test]
    fn public_keys_verify_their_own_family_only() {
        let claims = serde_json::json!({"exp": now() + 60, "channels": ["a"]});
        let rsa = SubscribeKey::from_file_contents(RSA_PUBLIC.as_bytes(), 0).unwrap();
        let ec = SubscribeKey::from_file_contents(EC_PUBLIC.as_bytes(), 0).unwrap();
        let rs256 = encode(
            &Header::new(Algorithm::RS256),
            &claims,
            &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap();
        let es256 = encode(
            &Header::new(Algorithm::ES256),
            &claims,
            &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap();
        assert!(rsa.verify(rs256.as_bytes()).is_ok());
        assert!(ec.verify(es256.as_bytes()).is_ok());
        assert_eq!(rsa.verify(es256.as_bytes()), Err(TokenError::BadSignature));
        assert_eq!(ec.verify(rs256.as_bytes()), Err(TokenError::BadSignature));
        // Algorithm confusion: an HS256 token whose secret is the public key's PEM.
        for (k, public) in [(&rsa, RSA_PUBLIC), (&ec, EC_PUBLIC)] {
            let forged = encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(public.as_bytes()).unwrap(),
            )
            .unwrap();
            assert_eq!(k.verify(forged.as_bytes()), Err(TokenError::BadSignature));
        }
    }
}
