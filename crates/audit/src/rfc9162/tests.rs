use proptest::prelude::*;

use super::*;

fn leaves(n: u64) -> Vec<Hash> {
    (0..n).map(|i| leaf_hash(&i.to_le_bytes())).collect()
}

/// The hash of `[start, end)` computed from the leaves directly.
fn range_root(all: &[Hash], start: u64, end: u64) -> Hash {
    root_of(&all[start as usize..end as usize])
}

/// A proof built from a plan with hashes computed from the leaves.
fn materialize(all: &[Hash], plan: &[(u64, u64)]) -> Vec<Hash> {
    plan.iter().map(|(s, e)| range_root(all, *s, *e)).collect()
}

#[test]
fn known_roots() {
    assert_eq!(
        hex(&empty_root()),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    // RFC 6962 test tree leaf 0 is the empty string.
    assert_eq!(
        hex(&leaf_hash(b"")),
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    );
}

#[test]
fn range_nodes_decompose_like_the_rfc() {
    assert_eq!(range_nodes(0, 7), vec![(2, 0), (1, 2), (0, 6)]);
    assert_eq!(range_nodes(8, 13), vec![(2, 2), (0, 12)]);
    assert_eq!(range_nodes(0, 0), vec![]);
    assert_eq!(range_nodes(0, 8), vec![(3, 0)]);
}

#[test]
fn out_of_range_requests_are_errors() {
    assert!(inclusion_plan(5, 5).is_err());
    assert!(consistency_plan(6, 5).is_err());
    let h = leaf_hash(b"x");
    assert!(matches!(
        verify_inclusion(3, 3, &h, &[], &h),
        Err(ProofError::OutOfRange(_))
    ));
    assert!(matches!(
        verify_consistency(4, 3, &[], &h, &h),
        Err(ProofError::OutOfRange(_))
    ));
}

#[test]
fn huge_indices_and_sizes_are_errors_not_panics() {
    // Found by the `proof` fuzz target: index and size - 1 differing in the top bit.
    let h = leaf_hash(b"x");
    for (index, size) in [
        (1 << 63, u64::MAX),
        (0, u64::MAX),
        (u64::MAX - 1, u64::MAX),
        (1, 1 << 63),
    ] {
        assert!(verify_inclusion(index, size, &h, &[h; 3], &h).is_err());
        assert!(verify_consistency(index.max(1), size, &[h; 3], &h, &h).is_err());
    }
}

proptest! {
    #[test]
    fn frontier_root_matches_the_recursive_definition(n in 0u64..300) {
        let all = leaves(n);
        let mut f = Frontier::default();
        for l in &all {
            f.push(*l);
        }
        prop_assert_eq!(f.root(), root_of(&all));
        let rebuilt: Vec<Hash> = range_nodes(0, n)
            .iter()
            .map(|(level, index)| range_root(&all, index << level, (index + 1) << level))
            .collect();
        prop_assert_eq!(Frontier::from_nodes(n, &rebuilt).unwrap(), f);
    }

    #[test]
    fn inclusion_proofs_verify_and_any_change_breaks_them(n in 1u64..300, pick in 0u64..300, flip in 0usize..64) {
        let all = leaves(n);
        let index = pick % n;
        let proof = materialize(&all, &inclusion_plan(index, n).unwrap());
        let root = root_of(&all);
        prop_assert!(verify_inclusion(index, n, &all[index as usize], &proof, &root).is_ok());
        // Wrong leaf, wrong index, truncated or extended proof, flipped bit: all refused.
        let other = leaf_hash(b"other");
        prop_assert!(verify_inclusion(index, n, &other, &proof, &root).is_err());
        if n > 1 {
            prop_assert!(verify_inclusion((index + 1) % n, n, &all[index as usize], &proof, &root).is_err());
        }
        if !proof.is_empty() {
            let mut bad = proof.clone();
            let at = flip % bad.len();
            bad[at][flip % 32] ^= 1;
            prop_assert!(verify_inclusion(index, n, &all[index as usize], &bad, &root).is_err());
            prop_assert!(verify_inclusion(index, n, &all[index as usize], &proof[1..], &root).is_err());
        }
        let mut longer = proof.clone();
        longer.push(other);
        prop_assert!(verify_inclusion(index, n, &all[index as usize], &longer, &root).is_err());
    }

    #[test]
    fn consistency_proofs_verify_and_forks_are_refused(n2 in 1u64..300, pick in 0u64..300) {
        let all = leaves(n2);
        let n1 = pick % (n2 + 1);
        let proof = materialize(&all, &consistency_plan(n1, n2).unwrap());
        let (r1, r2) = (root_of(&all[..n1 as usize]), root_of(&all));
        if n1 == 0 {
            prop_assert!(verify_consistency(n1, n2, &proof, &r1, &r2).is_err());
            return Ok(());
        }
        prop_assert!(verify_consistency(n1, n2, &proof, &r1, &r2).is_ok());
        if n1 > 0 && n1 < n2 {
            // A fork: the same first tree, a different history after it, same size.
            let mut forked = all.clone();
            let last = forked.len() - 1;
            forked[last] = leaf_hash(b"fork");
            let fr2 = root_of(&forked);
            prop_assert!(verify_consistency(n1, n2, &proof, &r1, &fr2).is_err());
            // A rewritten past.
            let mut rewritten = all.clone();
            rewritten[0] = leaf_hash(b"rewritten");
            let rr1 = root_of(&rewritten[..n1 as usize]);
            prop_assert!(verify_consistency(n1, n2, &proof, &rr1, &r2).is_err());
            let mut extra = proof.clone();
            extra.push(r1);
            prop_assert!(verify_consistency(n1, n2, &extra, &r1, &r2).is_err());
        }
    }
}
