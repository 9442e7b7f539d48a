//! Property tests of sealing at rest (docs/DESIGN.md §6): a sealed secret opens
//! only under the same key, for the same credential name and column, and
//! only unaltered; the sealed bytes never carry the plaintext.

use proptest::prelude::*;
use tokend::store::seal::{Place, Sealer};
use tokend_proto::Secret;

/// The columns the store seals (plus its key check); `open` takes a
/// `&'static str` column, as the store passes constants.
const COLUMNS: &[&str] = &[
    "access_token",
    "refresh_token",
    "client_secret",
    "key_check",
];

fn column() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(COLUMNS)
}

fn key() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_sealed_secret_opens_to_itself(
        key in key(),
        name in ".{0,40}",
        column in column(),
        secret in ".{0,200}",
    ) {
        let sealer = Sealer::from_key(&key);
        let sealed = sealer.seal(Place::of(&name, 1, column), &Secret::new(secret.clone())).unwrap();
        let opened = sealer.open(Place::of(&name, 1, column), &sealed).unwrap();
        prop_assert_eq!(opened.expose(), secret.as_str());
    }

    #[test]
    fn a_sealed_secret_moved_to_another_name_incarnation_or_column_does_not_open(
        key in key(),
        (name, other_name) in ("[a-z0-9][a-z0-9._-]{0,20}", "[a-z0-9][a-z0-9._-]{0,20}"),
        (col, other_col) in (column(), column()),
        secret in ".{1,64}",
    ) {
        prop_assume!((name.as_str(), col) != (other_name.as_str(), other_col));
        let sealer = Sealer::from_key(&key);
        let sealed = sealer.seal(Place::of(&name, 1, col), &Secret::new(secret)).unwrap();
        prop_assert!(sealer.open(Place::of(&other_name, 1, other_col), &sealed).is_err());
        prop_assert!(sealer.open(Place::of(&name, 2, col), &sealed).is_err());
    }

    #[test]
    fn another_key_does_not_open_it(
        (key, other) in (key(), key()),
        name in "[a-z0-9]{1,12}",
        column in column(),
        secret in ".{0,64}",
    ) {
        prop_assume!(key != other);
        let sealed = Sealer::from_key(&key).seal(Place::of(&name, 1, column), &Secret::new(secret)).unwrap();
        prop_assert!(Sealer::from_key(&other).open(Place::of(&name, 1, column), &sealed).is_err());
    }

    #[test]
    fn any_altered_byte_is_detected(
        key in key(),
        secret in ".{0,64}",
        at in any::<prop::sample::Index>(),
        flip in 1u8..,
    ) {
        let sealer = Sealer::from_key(&key);
        let mut sealed = sealer.seal(Place::of("n", 1, "access_token"), &Secret::new(secret)).unwrap();
        let i = at.index(sealed.len());
        sealed[i] ^= flip;
        prop_assert!(sealer.open(Place::of("n", 1, "access_token"), &sealed).is_err());
    }

    #[test]
    fn truncated_or_garbage_blobs_are_errors_not_panics(
        key in key(),
        blob in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        // 1 format byte + 24 nonce bytes + 16 tag bytes is the shortest
        // sealed value; random bytes must simply fail to open.
        prop_assert!(Sealer::from_key(&key).open(Place::of("n", 1, "access_token"), &blob).is_err());
    }

    #[test]
    fn sealed_bytes_never_contain_the_plaintext_and_never_repeat(
        key in key(),
        secret in "[ -~]{8,64}",
    ) {
        let sealer = Sealer::from_key(&key);
        let a = sealer.seal(Place::of("n", 1, "access_token"), &Secret::new(secret.clone())).unwrap();
        let b = sealer.seal(Place::of("n", 1, "access_token"), &Secret::new(secret.clone())).unwrap();
        prop_assert!(!a.windows(secret.len()).any(|w| w == secret.as_bytes()));
        prop_assert_ne!(a, b, "a fresh nonce per seal");
    }
}
