//! Where a commit enters: git2 reads of the policy repository (never a checkout) and the
//! reconciler, the only writer of the active snapshot.
//!
//! `git` knows nothing of policy semantics: it resolves revisions, describes commits and reads
//! a subtree's blobs. `reconcile` turns every new commit into a `Snapshot` through `repo`,
//! records it as a change through `record`, and stores it in the gateway's `State`. `signature`
//! verifies that every new commit is signed by a key the already trusted history lists. Nothing
//! here decides a call.

pub mod git;
pub mod reconcile;
pub mod signature;
