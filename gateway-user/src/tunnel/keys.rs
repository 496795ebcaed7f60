//! The host's WireGuard key: created on the host, kept in a file only its owner can read,
//! never sent anywhere (only the public half is).

use anyhow::{Context as _, Result, bail};
use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use boringtun::x25519::{PublicKey, StaticSecret};
use std::{
    io::Write as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::Path,
};

/// A key pair; the secret half stays in this process and in the key file.
#[derive(Clone)]
pub struct KeyPair {
    pub secret: StaticSecret,
    pub public: PublicKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &public_b64(&self.public))
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A fresh key pair from the OS CSPRNG.
    pub fn generate() -> Result<KeyPair> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("OS random source: {e}"))?;
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret);
        Ok(KeyPair { secret, public })
    }

    pub fn public_b64(&self) -> String {
        public_b64(&self.public)
    }
}

/// A public key as WireGuard writes it (base64 of 32 bytes).
pub fn public_b64(k: &PublicKey) -> String {
    B64.encode(k.as_bytes())
}

/// Reads a base64 WireGuard key.
pub fn decode_key(text: &str) -> Result<[u8; 32]> {
    let bytes = B64
        .decode(text.trim())
        .map_err(|e| anyhow::anyhow!("not base64 ({e})"))?;
    let key: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| anyhow::anyhow!("{} bytes, a WireGuard key has 32", b.len()))?;
    Ok(key)
}

/// Loads the key file, creating it (and a private parent folder) on first start. A file
/// that group or others may read, or that does not hold a key, is refused.
pub fn load_or_create(path: &Path) -> Result<(KeyPair, bool)> {
    match std::fs::metadata(path) {
        Ok(_) => Ok((load(path)?, false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let pair = KeyPair::generate()?;
            write_new(path, &pair)?;
            Ok((pair, true))
        }
        Err(e) => Err(e).with_context(|| format!("reading the tunnel key {}", path.display())),
    }
}

/// Loads an existing key file.
pub fn load(path: &Path) -> Result<KeyPair> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("reading the tunnel key {}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        bail!(
            "the tunnel key {} may be read by others (mode {:o}): chmod 600 it, and rotate it \
             (`gateway-agent rotate-key`) if anyone else could have read it",
            path.display(),
            meta.mode() & 0o777
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the tunnel key {}", path.display()))?;
    let bytes = decode_key(&text)
        .with_context(|| format!("the tunnel key {} holds no key", path.display()))?;
    let secret = StaticSecret::from(bytes);
    let public = PublicKey::from(&secret);
    Ok(KeyPair { secret, public })
}

/// Writes `pair` to `path` atomically (a private temporary file renamed over it).
pub fn write_new(path: &Path, pair: &KeyPair) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", dir.display()))?;
    }
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("wireguard.key")
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(format!("{}\n", B64.encode(pair.secret.to_bytes())).as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("replacing the tunnel key {}", path.display()))?;
    Ok(())
}

/// A new key replaces the old one in the key file. The running agent notices and uses it
/// at once (sessions under the old key end); it returns the new pair.
pub fn rotate(path: &Path) -> Result<KeyPair> {
    if !path.exists() {
        bail!(
            "no tunnel key at {} yet: the agent creates it on its first start",
            path.display()
        );
    }
    let pair = KeyPair::generate()?;
    write_new(path, &pair)?;
    Ok(pair)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_private_reloaded_and_rotated() {
        let dir = std::env::temp_dir().join(format!("ztg-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub/wireguard.key");
        let (a, created) = load_or_create(&path).expect("create");
        assert!(created);
        assert_eq!(
            std::fs::metadata(&path).expect("meta").mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(path.parent().expect("dir"))
                .expect("meta")
                .mode()
                & 0o777,
            0o700
        );
        let (b, created) = load_or_create(&path).expect("load");
        assert!(!created);
        assert_eq!(a.public, b.public);
        let c = rotate(&path).expect("rotate");
        assert_ne!(c.public, a.public);
        assert_eq!(load(&path).expect("load").public, c.public);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = load(&path).expect_err("readable by others").to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::write(&path, "not a key\n").expect("write");
        let err = format!("{:#}", load(&path).expect_err("garbage"));
        assert!(err.contains("holds no key"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn keys_decode_strictly() {
        assert!(decode_key("AAAA").is_err());
        let k = KeyPair::generate().expect("key");
        assert_eq!(
            decode_key(&k.public_b64()).expect("decode"),
            *k.public.as_bytes()
        );
    }
}
