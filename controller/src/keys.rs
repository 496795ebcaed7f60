//! The controller's secret key, kept in a file outside the database.
//!
//! One 32-byte master key (64 hex characters, mode 0600), from which two keys are
//! derived (HMAC-SHA-256 of the master key over a label):
//!
//! * the **audit key**: the audit trail's hash chain is an HMAC-SHA-256 chain under it,
//!   so someone who can write the database but cannot read the key file cannot rewrite
//!   the trail and recompute a chain that verifies;
//! * the **TOTP key**: admin users' TOTP secrets are stored sealed with it
//!   (ChaCha20-Poly1305, from `ring`, the user name as associated data), so a copy of
//!   the database alone does not give their second factor.
//!
//! The database records a fingerprint of the key (an HMAC over a fixed label): opening a
//! keyed database with another key, or without its key, is refused instead of
//! silently starting a new chain.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use hmac::Mac as _;
use ring::aead;

use crate::{Error, hex, unhex};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Prefix of a sealed TOTP secret as stored.
const SEALED_PREFIX: &str = "sealed1:";

/// The derived keys (see the module docs).
pub struct Keys {
    audit: [u8; 32],
    totp: aead::LessSafeKey,
    fingerprint: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys(fingerprint {})", self.fingerprint)
    }
}

fn prf(key: &[u8], label: &str) -> [u8; 32] {
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        unreachable!("HMAC takes keys of any length")
    };
    mac.update(label.as_bytes());
    mac.finalize().into_bytes().into()
}

/// The default key file of a database: `controller.key` in the database's folder.
pub fn default_key_file(db: &Path) -> PathBuf {
    db.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        .join("controller.key")
}

impl Keys {
    /// The keys derived from a master key.
    pub fn from_master(master: &[u8; 32]) -> Keys {
        let audit = prf(master, "ztgw audit chain v2");
        let totp_raw = prf(master, "ztgw totp sealing v1");
        let Ok(unbound) = aead::UnboundKey::new(&aead::CHACHA20_POLY1305, &totp_raw) else {
            unreachable!("a 32-byte ChaCha20-Poly1305 key")
        };
        let fingerprint = hex(&prf(master, "ztgw key fingerprint v1")[..16]);
        Keys {
            audit,
            totp: aead::LessSafeKey::new(unbound),
            fingerprint,
        }
    }

    /// Reads the key file (64 hex characters). Refuses a file that others may read.
    pub fn load(path: &Path) -> Result<Keys, Error> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::Internal(format!("the key file {}: {e}", path.display())))?;
        if meta.mode() & 0o077 != 0 {
            return Err(Error::Internal(format!(
                "the key file {} has mode {:o}: it must be readable by its owner only \
                 (chmod 600)",
                path.display(),
                meta.mode() & 0o777
            )));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Internal(format!("reading {}: {e}", path.display())))?;
        let bytes = unhex(text.trim())
            .filter(|b| b.len() == 32)
            .ok_or_else(|| {
                Error::Internal(format!(
                    "{} does not hold a key (64 hex characters)",
                    path.display()
                ))
            })?;
        let mut master = [0u8; 32];
        master.copy_from_slice(&bytes);
        Ok(Keys::from_master(&master))
    }

    /// Creates a new key file (mode 0600; its folder 0700 when created); refuses to
    /// overwrite one.
    pub fn create(path: &Path) -> Result<Keys, Error> {
        use std::os::unix::fs::OpenOptionsExt as _;
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            crate::store::create_private_dir(dir)?;
        }
        let mut master = [0u8; 32];
        crate::fill_random(&mut master)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::Internal(format!("creating {}: {e}", path.display())))?;
        f.write_all(format!("{}\n", hex(&master)).as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::Internal(format!("writing {}: {e}", path.display())))?;
        Ok(Keys::from_master(&master))
    }

    /// A short public identifier of the key (stored in the database to recognise it).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// A MAC under the audit key, for the audit chain.
    pub fn audit_mac(&self) -> HmacSha256 {
        let Ok(mac) = HmacSha256::new_from_slice(&self.audit) else {
            unreachable!("HMAC takes keys of any length")
        };
        mac
    }

    /// Whether a stored TOTP secret is sealed (plaintext ones come from before keys).
    pub fn is_sealed(stored: &str) -> bool {
        stored.starts_with(SEALED_PREFIX)
    }

    /// Seals a TOTP secret of `user`: `sealed1:` + hex(nonce || ciphertext || tag).
    pub fn seal_totp(&self, user: &str, secret: &str) -> Result<String, Error> {
        let mut nonce = [0u8; aead::NONCE_LEN];
        crate::fill_random(&mut nonce)?;
        let mut data = secret.as_bytes().to_vec();
        self.totp
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(user.as_bytes()),
                &mut data,
            )
            .map_err(|_| Error::Internal("sealing a TOTP secret failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(format!("{SEALED_PREFIX}{}", hex(&out)))
    }

    /// Opens a sealed TOTP secret of `user`.
    pub fn open_totp(&self, user: &str, stored: &str) -> Result<String, Error> {
        let bad = || Error::Internal(format!("the TOTP secret of `{user}` does not open"));
        let raw = stored
            .strip_prefix(SEALED_PREFIX)
            .and_then(unhex)
            .ok_or_else(bad)?;
        if raw.len() < aead::NONCE_LEN {
            return Err(bad());
        }
        let (nonce, rest) = raw.split_at(aead::NONCE_LEN);
        let nonce = aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad())?;
        let mut data = rest.to_vec();
        let plain = self
            .totp
            .open_in_place(nonce, aead::Aad::from(user.as_bytes()), &mut data)
            .map_err(|_| bad())?;
        String::from_utf8(plain.to_vec()).map_err(|_| bad())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn totp_sealing_round_trips_and_binds_the_user() {
        let k = Keys::from_master(&[7u8; 32]);
        let s = k.seal_totp("alice", "JBSWY3DPEHPK3PXP").unwrap();
        assert!(Keys::is_sealed(&s) && !s.contains("JBSWY3DPEHPK3PXP"));
        assert_eq!(k.open_totp("alice", &s).unwrap(), "JBSWY3DPEHPK3PXP");
        // Another user's row, another key: does not open.
        assert!(k.open_totp("bob", &s).is_err());
        assert!(
            Keys::from_master(&[8u8; 32])
                .open_totp("alice", &s)
                .is_err()
        );
        // Two seals of the same secret differ (random nonces).
        assert_ne!(s, k.seal_totp("alice", "JBSWY3DPEHPK3PXP").unwrap());
    }

    #[test]
    fn the_default_key_file_is_beside_the_database() {
        assert_eq!(
            default_key_file(Path::new("controller.db")),
            Path::new("./controller.key")
        );
        assert_eq!(
            default_key_file(Path::new("/var/lib/zt/c.db")),
            Path::new("/var/lib/zt/controller.key")
        );
    }

    #[test]
    fn key_files_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k").join("controller.key");
        let a = Keys::create(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(p.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        assert_eq!(Keys::load(&p).unwrap().fingerprint(), a.fingerprint());
        assert!(Keys::create(&p).is_err(), "never overwritten");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Keys::load(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }
}
