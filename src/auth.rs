//! Access control both servers share.
//!
//! - The admin secret (`--admin-token-file`): every admin request but `/health` must
//!   carry `Authorization: Bearer <secret>`. The secret is read once at start-up; a
//!   request's header is compared with it in constant time (the time taken does not
//!   depend on where the first differing byte is), so it cannot be guessed a byte at a
//!   time from response times.
//! - Subscriber tokens ([`SubscribeKey`], issue 13; not yet wired into the servers):
//!   JWTs checked with the `jsonwebtoken` crate against an HMAC secret or an RSA / EC
//!   public key. The key's family fixes the algorithms accepted, so an HS token checked
//!   against a public key (algorithm confusion) and `alg: none` are refused; `exp` is
//!   required; the `channels` claim lists exact names and prefixes ending in `*`.

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
        let Some(v) = authorization else {
            return false;
        };
        let Some((scheme, rest)) = v.split_at_checked(6) else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
            return false;
        }
        let given = rest.trim_ascii();
        constant_time_eq(given, &self.0)
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

impl SubscribeKey {
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
            if let Ok(k) = DecodingKey::from_rsa_pem(bytes) {
                (
                    k,
                    vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
                    "RSA",
                )
            } else if let Ok(k) = DecodingKey::from_ec_pem(bytes) {
                (k, vec![Algorithm::ES256, Algorithm::ES384], "EC")
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
            assert!(k.verify(t.as_bytes()).is_err(), "{header} accepted");
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
