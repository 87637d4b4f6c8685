//! RFC 9162 (Certificate Transparency v2) Merkle tree math, pure: leaf and node hashes,
//! roots, the plans of inclusion and consistency proofs (§2.1.3.1, §2.1.4.1), and their
//! verification (§2.1.3.2, §2.1.4.2).
//!
//! Nodes are named by `(level, index)`: the perfect subtree of `2^level` leaves starting at
//! leaf `index << level`. Any range `[start, end)` that the RFC's recursion visits starts on a
//! boundary of its largest power-of-two part, so its hash is the right-to-left fold of the
//! perfect subtrees of its binary decomposition ([`range_nodes`], [`fold_range`]).

use aws_lc_rs::digest;

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// Deepest possible tree: 2^63 leaves.
const MAX_PROOF_LEN: usize = 64;

/// Why a proof does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// Index or sizes out of range.
    #[error("{0}")]
    OutOfRange(String),
    /// The proof has the wrong number of hashes for these sizes.
    #[error("proof has {got} hashes; {want} expected for these sizes")]
    WrongLength {
        /// Hashes given.
        got: usize,
        /// Hashes expected.
        want: usize,
    },
    /// The computed root is not the expected one.
    #[error("proof does not lead to the expected root: computed {computed}, expected {expected}")]
    RootMismatch {
        /// Hex of the computed root.
        computed: String,
        /// Hex of the expected root.
        expected: String,
    },
}

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&[0x00]);
    ctx.update(data);
    to_hash(ctx.finish())
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&[0x01]);
    ctx.update(left);
    ctx.update(right);
    to_hash(ctx.finish())
}

/// The root of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Hash {
    to_hash(digest::digest(&digest::SHA256, b""))
}

fn to_hash(d: digest::Digest) -> Hash {
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Lowercase hex of a hash.
pub fn hex(h: &Hash) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// The perfect subtrees `(level, index)` making up `[start, end)`, largest first.
pub fn range_nodes(start: u64, end: u64) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let remaining = end - at;
        // The largest power of two that fits and keeps `at` aligned.
        let mut level = 63 - remaining.leading_zeros();
        if at != 0 {
            level = level.min(at.trailing_zeros());
        }
        out.push((level, at >> level));
        at += 1u64 << level;
    }
    out
}

/// Folds the hashes of a range's perfect subtrees (largest first) into the range's hash.
pub fn fold_range(nodes: &[Hash]) -> Option<Hash> {
    let (last, rest) = nodes.split_last()?;
    Some(
        rest.iter()
            .rev()
            .fold(*last, |acc, left| node_hash(left, &acc)),
    )
}

/// The ranges whose hashes form the inclusion proof of leaf `index` in a tree of `size`
/// leaves, in proof order (RFC 9162 §2.1.3.1 `PATH`).
pub fn inclusion_plan(index: u64, size: u64) -> Result<Vec<(u64, u64)>, ProofError> {
    if index >= size {
        return Err(ProofError::OutOfRange(format!(
            "leaf index {index} is not in a tree of size {size}"
        )));
    }
    let mut out = Vec::new();
    path(index, 0, size, &mut out);
    Ok(out)
}

fn path(m: u64, start: u64, end: u64, out: &mut Vec<(u64, u64)>) {
    let n = end - start;
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(m, start, start + k, out);
        out.push((start + k, end));
    } else {
        path(m - k, start + k, end, out);
        out.push((start, start + k));
    }
}

/// The ranges whose hashes form the consistency proof from `size1` to `size2`, in proof order
/// (RFC 9162 §2.1.4.1 `PROOF`).
pub fn consistency_plan(size1: u64, size2: u64) -> Result<Vec<(u64, u64)>, ProofError> {
    if size1 > size2 {
        return Err(ProofError::OutOfRange(format!(
            "size {size1} is larger than size {size2}"
        )));
    }
    let mut out = Vec::new();
    if size1 != 0 && size1 != size2 {
        subproof(size1, 0, size2, true, &mut out);
    }
    Ok(out)
}

fn subproof(m: u64, start: u64, end: u64, whole: bool, out: &mut Vec<(u64, u64)>) {
    let n = end - start;
    if m == n {
        if !whole {
            out.push((start, end));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, start, start + k, whole, out);
        out.push((start + k, end));
    } else {
        subproof(m - k, start + k, end, false, out);
        out.push((start, start + k));
    }
}

/// The largest power of two strictly less than `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    1u64 << (63 - (n - 1).leading_zeros())
}

/// Verifies that `leaf` is at `index` in the tree of `size` leaves with root `root`
/// (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    let computed = root_from_inclusion(index, size, leaf, proof)?;
    check_root(&computed, root)
}

/// The root implied by an inclusion proof.
pub fn root_from_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
) -> Result<Hash, ProofError> {
    if index >= size {
        return Err(ProofError::OutOfRange(format!(
            "leaf index {index} is not in a tree of size {size}"
        )));
    }
    let want = inclusion_len(index, size);
    if proof.len() != want {
        return Err(ProofError::WrongLength {
            got: proof.len(),
            want,
        });
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongLength {
            got: proof.len(),
            want,
        });
    }
    Ok(r)
}

fn inclusion_len(index: u64, size: u64) -> usize {
    // Levels below the point where the paths to `index` and to the last leaf meet, plus the
    // right border above it.
    let inner = 64 - (index ^ (size - 1)).leading_zeros();
    // `inner` is 64 when the top bits differ; a shift by 64 would overflow.
    let border = index.checked_shr(inner).unwrap_or(0).count_ones();
    (inner + border) as usize
}

/// Verifies that the tree of `size2` leaves with root `root2` extends the tree of `size1`
/// leaves with root `root1` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    size1: u64,
    size2: u64,
    proof: &[Hash],
    root1: &Hash,
    root2: &Hash,
) -> Result<(), ProofError> {
    if size2 < size1 {
        return Err(ProofError::OutOfRange(format!(
            "size {size2} is smaller than size {size1}: a log never shrinks"
        )));
    }
    if size1 == 0 {
        // Every tree extends the empty tree: such a "proof" proves nothing, and accepting
        // one would let a caller skip the check it meant to make.
        return Err(ProofError::OutOfRange(
            "a consistency proof from the empty tree proves nothing".into(),
        ));
    }
    if size1 == size2 {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength {
                got: proof.len(),
                want: 0,
            });
        }
        return check_root(root2, root1);
    }
    if proof.is_empty() || proof.len() > MAX_PROOF_LEN {
        return Err(ProofError::WrongLength {
            got: proof.len(),
            want: consistency_len(size1, size2),
        });
    }
    let mut hashes: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if size1.is_power_of_two() {
        hashes.push(*root1);
    }
    hashes.extend_from_slice(proof);
    let want = consistency_len(size1, size2);
    if proof.len() != want {
        return Err(ProofError::WrongLength {
            got: proof.len(),
            want,
        });
    }
    let (mut fn_, mut sn) = (size1 - 1, size2 - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let Some((first, rest)) = hashes.split_first() else {
        return Err(ProofError::WrongLength { got: 0, want });
    };
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if sn == 0 {
            return Err(ProofError::WrongLength {
                got: proof.len(),
                want,
            });
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongLength {
            got: proof.len(),
            want,
        });
    }
    check_root(&fr, root1)?;
    check_root(&sr, root2)
}

fn consistency_len(size1: u64, size2: u64) -> usize {
    consistency_plan(size1, size2).map_or(0, |p| p.len())
}

fn check_root(computed: &Hash, expected: &Hash) -> Result<(), ProofError> {
    // SECURITY: roots are public values, so a plain comparison leaks nothing.
    if computed == expected {
        Ok(())
    } else {
        Err(ProofError::RootMismatch {
            computed: hex(computed),
            expected: hex(expected),
        })
    }
}

/// The right edge of a tree under construction: the perfect subtrees of its binary
/// decomposition, largest first. Appending a leaf merges equal-sized neighbours; every merge
/// completes a node, which the caller stores.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// `(level, hash)`, strictly decreasing levels.
    nodes: Vec<(u32, Hash)>,
}

impl Frontier {
    /// The frontier of a tree of `size` leaves from its decomposition's node hashes (largest
    /// first), as read back from storage.
    pub fn from_nodes(size: u64, hashes: &[Hash]) -> Option<Self> {
        let plan = range_nodes(0, size);
        if plan.len() != hashes.len() {
            return None;
        }
        Some(Self {
            size,
            nodes: plan
                .iter()
                .map(|(l, _)| *l)
                .zip(hashes.iter().copied())
                .collect(),
        })
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash; returns the hashes of the nodes it completed, from level 0 up
    /// (the leaf itself first).
    pub fn push(&mut self, leaf: Hash) -> Vec<Hash> {
        let mut completed = vec![leaf];
        let mut current = (0u32, leaf);
        while let Some(&(level, left)) = self.nodes.last() {
            if level != current.0 {
                break;
            }
            self.nodes.pop();
            current = (level + 1, node_hash(&left, &current.1));
            completed.push(current.1);
        }
        self.nodes.push(current);
        self.size += 1;
        completed
    }

    /// The root hash of the tree so far.
    pub fn root(&self) -> Hash {
        let hashes: Vec<Hash> = self.nodes.iter().map(|(_, h)| *h).collect();
        fold_range(&hashes).unwrap_or_else(empty_root)
    }
}

/// The root of a whole list of leaf hashes, by the RFC's recursive definition (for tests and
/// for checking the frontier).
pub fn root_of(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves.first().copied().unwrap_or_else(empty_root),
        n => {
            let k = usize::try_from(split(n as u64)).unwrap_or(n / 2);
            let (l, r) = leaves.split_at(k);
            node_hash(&root_of(l), &root_of(r))
        }
    }
}

#[cfg(test)]
mod tests;
