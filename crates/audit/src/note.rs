//! C2SP signed notes with Ed25519 keys: the envelope of checkpoints and cosignatures.
//!
//! ```text
//! <text: UTF-8 lines, each ending in \n>
//! \n
//! — <key name> <base64(key id (4 bytes) || signature)>\n
//! ```
//!
//! A key id is the first 4 bytes of `SHA-256(name || "\n" || type || public key)`, with type
//! `0x01` for Ed25519 note signatures and `0x04` for Ed25519 cosignatures. Verifier keys are
//! written `<name>+<hex key id>+<base64(type || public key)>` and signer keys
//! `PRIVATE+KEY+<name>+<hex key id>+<base64(type || seed)>`, as in Go's `golang.org/x/mod/sumdb/note`.

use std::fmt;

use aws_lc_rs::digest;
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

/// Largest note accepted, in bytes.
pub const MAX_NOTE_LEN: usize = 64 * 1024;
/// Most signature lines accepted on one note.
pub const MAX_SIGNATURES: usize = 100;
/// The signature line prefix: an em dash and a space.
const SIG_PREFIX: &str = "\u{2014} ";

/// Ed25519 note signature type.
pub const TYPE_ED25519: u8 = 0x01;
/// Ed25519 cosignature (tlog-cosignature/v1) type.
pub const TYPE_COSIGNATURE: u8 = 0x04;

/// Why a note, key or signature is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// The note does not have the signed-note shape.
    #[error("malformed signed note: {0}")]
    Malformed(String),
    /// A key string does not parse.
    #[error("malformed key: {0}")]
    BadKey(String),
    /// No signature by the expected key.
    #[error("note has no signature from key {name} ({key_id})")]
    Unsigned {
        /// Key name.
        name: String,
        /// Key id in hex.
        key_id: String,
    },
    /// A signature by the expected key does not verify.
    #[error(
        "signature from key {name} does not verify: the note was altered or signed by another key"
    )]
    BadSignature {
        /// Key name.
        name: String,
    },
}

/// The 4-byte id of a key.
pub fn key_id(name: &str, key_type: u8, public: &[u8]) -> [u8; 4] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(name.as_bytes());
    ctx.update(b"\n");
    ctx.update(&[key_type]);
    ctx.update(public);
    let d = ctx.finish();
    let mut id = [0u8; 4];
    id.copy_from_slice(d.as_ref().get(..4).unwrap_or(&[0; 4]));
    id
}

fn hex4(id: &[u8; 4]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty()
        || name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || c.is_control())
    {
        return Err(NoteError::BadKey(format!(
            "key name {name:?} must be non-empty, without spaces or '+'"
        )));
    }
    Ok(())
}

/// An Ed25519 key that signs notes (type 0x01) or cosignatures (type 0x04).
pub struct Signer {
    name: String,
    key_type: u8,
    pair: Ed25519KeyPair,
    seed: [u8; 32],
    id: [u8; 4],
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SECURITY: never print the seed.
        f.debug_struct("Signer")
            .field("name", &self.name)
            .field("key_id", &hex4(&self.id))
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A new random key named `name`.
    pub fn generate(name: &str, key_type: u8) -> Result<Self, NoteError> {
        let mut seed = [0u8; 32];
        aws_lc_rs::rand::fill(&mut seed)
            .map_err(|_| NoteError::BadKey("no randomness available".into()))?;
        Self::from_seed(name, key_type, seed)
    }

    fn from_seed(name: &str, key_type: u8, seed: [u8; 32]) -> Result<Self, NoteError> {
        check_name(name)?;
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|e| NoteError::BadKey(format!("invalid Ed25519 seed: {e}")))?;
        let id = key_id(name, key_type, pair.public_key().as_ref());
        Ok(Self {
            name: name.to_owned(),
            key_type,
            pair,
            seed,
            id,
        })
    }

    /// Parses `PRIVATE+KEY+<name>+<hex id>+<base64(type || seed)>`.
    pub fn parse(s: &str) -> Result<Self, NoteError> {
        let rest = s
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| NoteError::BadKey("a signer key starts with PRIVATE+KEY+".into()))?;
        let (name, id_hex, body) = split_key(rest)?;
        let raw = B64
            .decode(body)
            .map_err(|_| NoteError::BadKey("the key body is not base64".into()))?;
        let (&key_type, seed) = raw
            .split_first()
            .ok_or_else(|| NoteError::BadKey("empty key body".into()))?;
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| NoteError::BadKey("an Ed25519 seed is 32 bytes".into()))?;
        if key_type != TYPE_ED25519 && key_type != TYPE_COSIGNATURE {
            return Err(NoteError::BadKey(format!(
                "unsupported key type {key_type:#04x}"
            )));
        }
        let signer = Self::from_seed(name, key_type, seed)?;
        if hex4(&signer.id) != id_hex {
            return Err(NoteError::BadKey("key id does not match the key".into()));
        }
        Ok(signer)
    }

    /// The signer key string (secret: store it with 0600 permissions).
    pub fn to_key_string(&self) -> String {
        let mut body = vec![self.key_type];
        body.extend_from_slice(&self.seed);
        format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.name,
            hex4(&self.id),
            B64.encode(body)
        )
    }

    /// The matching verifier.
    pub fn verifier(&self) -> Verifier {
        let mut public = [0u8; 32];
        public.copy_from_slice(self.pair.public_key().as_ref());
        Verifier {
            name: self.name.clone(),
            key_type: self.key_type,
            public,
            id: self.id,
        }
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Signs raw bytes.
    pub fn sign_bytes(&self, msg: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.pair.sign(msg).as_ref());
        out
    }

    /// Signs `text` (which must end in a newline) and returns the whole signed note.
    pub fn sign_note(&self, text: &str) -> Result<String, NoteError> {
        check_text(text)?;
        let sig = self.sign_bytes(text.as_bytes());
        let mut payload = self.id.to_vec();
        payload.extend_from_slice(&sig);
        Ok(format!(
            "{text}\n{SIG_PREFIX}{} {}\n",
            self.name,
            B64.encode(payload)
        ))
    }

    /// A signature line with an arbitrary payload after the key id (cosignatures add a
    /// timestamp).
    pub fn signature_line(&self, payload_after_id: &[u8]) -> String {
        let mut payload = self.id.to_vec();
        payload.extend_from_slice(payload_after_id);
        format!("{SIG_PREFIX}{} {}\n", self.name, B64.encode(payload))
    }
}

/// A public key that checks note signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    name: String,
    key_type: u8,
    public: [u8; 32],
    id: [u8; 4],
}

impl Verifier {
    /// Parses `<name>+<hex id>+<base64(type || public key)>`.
    pub fn parse(s: &str) -> Result<Self, NoteError> {
        let (name, id_hex, body) = split_key(s.trim())?;
        check_name(name)?;
        let raw = B64
            .decode(body)
            .map_err(|_| NoteError::BadKey("the key body is not base64".into()))?;
        let (&key_type, public) = raw
            .split_first()
            .ok_or_else(|| NoteError::BadKey("empty key body".into()))?;
        if key_type != TYPE_ED25519 && key_type != TYPE_COSIGNATURE {
            return Err(NoteError::BadKey(format!(
                "unsupported key type {key_type:#04x}"
            )));
        }
        let public: [u8; 32] = public
            .try_into()
            .map_err(|_| NoteError::BadKey("an Ed25519 public key is 32 bytes".into()))?;
        let id = key_id(name, key_type, &public);
        if hex4(&id) != id_hex {
            return Err(NoteError::BadKey("key id does not match the key".into()));
        }
        Ok(Self {
            name: name.to_owned(),
            key_type,
            public,
            id,
        })
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn id(&self) -> [u8; 4] {
        self.id
    }

    /// The key type byte.
    pub fn key_type(&self) -> u8 {
        self.key_type
    }

    /// Checks an Ed25519 signature over raw bytes.
    pub fn verify_bytes(&self, msg: &[u8], sig: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.public)
            .verify(msg, sig)
            .is_ok()
    }
}

impl fmt::Display for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut body = vec![self.key_type];
        body.extend_from_slice(&self.public);
        write!(f, "{}+{}+{}", self.name, hex4(&self.id), B64.encode(body))
    }
}

fn split_key(s: &str) -> Result<(&str, &str, &str), NoteError> {
    let mut parts = s.splitn(3, '+');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(name), Some(id), Some(body))
            if id.len() == 8
                && id
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) =>
        {
            Ok((name, id, body))
        }
        _ => Err(NoteError::BadKey(
            "expected <name>+<8 hex digits>+<base64>".into(),
        )),
    }
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// Key name.
    pub name: String,
    /// Key id.
    pub key_id: [u8; 4],
    /// The bytes after the key id.
    pub payload: Vec<u8>,
}

/// A parsed, not yet verified, signed note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The signed text, ending in a newline.
    pub text: String,
    /// Its signatures, in order.
    pub signatures: Vec<NoteSignature>,
}

impl Note {
    /// Parses a signed note, enforcing the size limits.
    pub fn parse(bytes: &[u8]) -> Result<Self, NoteError> {
        if bytes.len() > MAX_NOTE_LEN {
            return Err(NoteError::Malformed(format!(
                "note is {} bytes; at most {MAX_NOTE_LEN} are accepted",
                bytes.len()
            )));
        }
        let s = std::str::from_utf8(bytes)
            .map_err(|_| NoteError::Malformed("note is not UTF-8".into()))?;
        let split = s
            .rfind("\n\n")
            .ok_or_else(|| NoteError::Malformed("no blank line before the signatures".into()))?;
        let (text, sigs) = s.split_at(split + 1);
        let sigs = sigs.get(1..).unwrap_or_default();
        check_text(text)?;
        if sigs.is_empty() {
            return Err(NoteError::Malformed("no signatures".into()));
        }
        if !sigs.ends_with('\n') {
            return Err(NoteError::Malformed(
                "the last signature line does not end in a newline".into(),
            ));
        }
        let mut signatures = Vec::new();
        for line in sigs.lines() {
            if signatures.len() == MAX_SIGNATURES {
                return Err(NoteError::Malformed(format!(
                    "more than {MAX_SIGNATURES} signatures"
                )));
            }
            signatures.push(parse_signature_line(line)?);
        }
        if signatures.is_empty() {
            return Err(NoteError::Malformed("no signatures".into()));
        }
        Ok(Self {
            text: text.to_owned(),
            signatures,
        })
    }

    /// Checks that `verifier` signed this note's text (type 0x01 signatures only).
    pub fn verify(&self, verifier: &Verifier) -> Result<(), NoteError> {
        let mut found = false;
        for sig in self
            .signatures
            .iter()
            .filter(|s| s.name == verifier.name && s.key_id == verifier.id)
        {
            found = true;
            if verifier.verify_bytes(self.text.as_bytes(), &sig.payload) {
                return Ok(());
            }
        }
        if found {
            Err(NoteError::BadSignature {
                name: verifier.name.clone(),
            })
        } else {
            Err(NoteError::Unsigned {
                name: verifier.name.clone(),
                key_id: hex4(&verifier.id),
            })
        }
    }
}

fn parse_signature_line(line: &str) -> Result<NoteSignature, NoteError> {
    let rest = line.strip_prefix(SIG_PREFIX).ok_or_else(|| {
        NoteError::Malformed(format!(
            "signature line {line:?} does not start with an em dash and a space"
        ))
    })?;
    let (name, b64) = rest
        .split_once(' ')
        .ok_or_else(|| NoteError::Malformed(format!("signature line {line:?} has no signature")))?;
    check_name(name)
        .map_err(|_| NoteError::Malformed(format!("bad key name in signature line {line:?}")))?;
    let raw = B64
        .decode(b64)
        .map_err(|_| NoteError::Malformed(format!("signature of {name} is not base64")))?;
    if raw.len() < 5 {
        return Err(NoteError::Malformed(format!(
            "signature of {name} is too short"
        )));
    }
    let (id, payload) = raw.split_at(4);
    let mut key_id = [0u8; 4];
    key_id.copy_from_slice(id);
    Ok(NoteSignature {
        name: name.to_owned(),
        key_id,
        payload: payload.to_vec(),
    })
}

fn check_text(text: &str) -> Result<(), NoteError> {
    if text.is_empty() || !text.ends_with('\n') {
        return Err(NoteError::Malformed(
            "note text must end in a newline".into(),
        ));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(NoteError::Malformed(
            "note text contains control characters".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_parse_verify_round_trip() {
        let signer = Signer::generate("example.org/log", TYPE_ED25519).unwrap();
        let note = signer.sign_note("hello\nworld\n").unwrap();
        let parsed = Note::parse(note.as_bytes()).unwrap();
        assert_eq!(parsed.text, "hello\nworld\n");
        parsed.verify(&signer.verifier()).unwrap();
        let vkey = signer.verifier().to_string();
        assert_eq!(Verifier::parse(&vkey).unwrap(), signer.verifier());
        let again = Signer::parse(&signer.to_key_string()).unwrap();
        assert_eq!(again.verifier(), signer.verifier());
        assert!(!format!("{signer:?}").contains(&signer.to_key_string()));
    }

    #[test]
    fn go_sumdb_note_vector_verifies() {
        // The example from golang.org/x/mod/sumdb/note's documentation.
        let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let msg = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        let v = Verifier::parse(vkey).unwrap();
        Note::parse(msg.as_bytes()).unwrap().verify(&v).unwrap();
    }

    #[test]
    fn altered_and_malformed_notes_are_refused() {
        let signer = Signer::generate("log", TYPE_ED25519).unwrap();
        let note = signer.sign_note("a\nb\n").unwrap();
        let altered = note.replacen("a\n", "c\n", 1);
        assert_eq!(
            Note::parse(altered.as_bytes())
                .unwrap()
                .verify(&signer.verifier()),
            Err(NoteError::BadSignature { name: "log".into() })
        );
        let other = Signer::generate("log", TYPE_ED25519).unwrap();
        assert!(matches!(
            Note::parse(note.as_bytes())
                .unwrap()
                .verify(&other.verifier()),
            Err(NoteError::Unsigned { .. })
        ));
        for (bad, why) in [
            ("a\nb\n", "no blank line"),
            ("a\n\n", "no signatures"),
            ("a\n\n- log AAAA\n", "em dash"),
            ("a\n\n\u{2014} log !!!\n", "not base64"),
            ("a\n\n\u{2014} log AAAA\n", "too short"),
            ("a\u{7}\n\n\u{2014} log AAAAAAAA\n", "control"),
        ] {
            let err = Note::parse(bad.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        let trailing = format!("{note}garbage");
        assert!(Note::parse(trailing.as_bytes()).is_err());
        let huge = vec![b'a'; MAX_NOTE_LEN + 1];
        assert!(
            Note::parse(&huge)
                .unwrap_err()
                .to_string()
                .contains("at most")
        );
    }

    #[test]
    fn malformed_keys_are_refused() {
        for bad in [
            "",
            "name",
            "name+zz+AAAA",
            "name+c74f20a3+!!",
            "name+c74f20a3+ARpc",
            "na me+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        ] {
            assert!(Verifier::parse(bad).is_err(), "{bad}");
        }
        // Right shape, wrong id.
        assert!(
            Verifier::parse("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
                .is_err()
        );
    }
}
