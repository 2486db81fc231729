//! Access control both servers share. Today: the admin secret (`--admin-token-file`):
//! every admin request but `/health` must carry `Authorization: Bearer <secret>`.
//!
//! The secret is read once at start-up; a request's header is compared with it in
//! constant time (the time taken does not depend on where the first differing byte
//! is), so the secret cannot be guessed a byte at a time from response times.

use std::path::Path;

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
}
