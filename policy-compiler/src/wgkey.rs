//! WireGuard public keys: 32 bytes, written as standard base64 (44 characters with the
//! trailing `=`), the form `wg pubkey` prints.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// A WireGuard (Curve25519) public key. Public by nature: `Debug` shows it in full.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WgKey(pub [u8; 32]);

/// Why a text is no WireGuard public key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("`{0}` is not standard base64")]
    Base64(String),
    #[error("`{0}` decodes to {1} bytes, a WireGuard key has 32")]
    Length(String, usize),
    #[error("the all-zero key is no public key")]
    AllZero,
}

impl WgKey {
    /// The key in standard base64 (44 characters).
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl FromStr for WgKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<WgKey, KeyError> {
        let shown: String = s.chars().take(60).collect();
        let bytes = STANDARD
            .decode(s)
            .map_err(|_| KeyError::Base64(shown.clone()))?;
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::Length(shown, bytes.len()))?;
        if key == [0; 32] {
            return Err(KeyError::AllZero);
        }
        Ok(WgKey(key))
    }
}

impl fmt::Display for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WgKey({self})")
    }
}

impl serde::Serialize for WgKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> serde::Deserialize<'de> for WgKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<WgKey, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_both_ways() {
        let k = WgKey([7; 32]);
        let s = k.to_string();
        assert_eq!(s.len(), 44);
        assert_eq!(s.parse::<WgKey>(), Ok(k));
        assert!(matches!(
            "not base64!".parse::<WgKey>(),
            Err(KeyError::Base64(_))
        ));
        assert!(matches!(
            "AAAA".parse::<WgKey>(),
            Err(KeyError::Length(_, 3))
        ));
        assert_eq!(
            WgKey([0; 32]).to_string().parse::<WgKey>(),
            Err(KeyError::AllZero)
        );
        // No padding, or trailing bits set: not the canonical form.
        assert!(s.trim_end_matches('=').parse::<WgKey>().is_err());
        let mut odd = s.clone();
        odd.replace_range(42..43, "x");
        assert!(odd.parse::<WgKey>().is_err());
    }
}
