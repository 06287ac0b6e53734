use std::path::Path;

use super::*;

fn today() -> Date {
    Date::parse("2026-12-01").unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// A copy of the example repository.
fn example() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policy-repo"), dir.path());
    dir
}

/// A repository with only the given files.
fn repo_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    dir
}

fn read(dir: &Path, rel: &str) -> String {
    std::fs::read_to_string(dir.join(rel)).unwrap()
}

fn compiles(dir: &Path) -> Compiled {
    repo::compile(&repo::read(dir, None).unwrap()).unwrap_or_else(|d| panic!("invalid:\n{d}"))
}

/// Every file under `dir`, as text.
fn all_text(dir: &Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.push_str(&all_text(&e.path()));
        } else {
            out.push_str(&String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()));
        }
    }
    out
}

fn hash(s: &str) -> String {
    token::sha256_hex(s)
}

fn entry(h: &str, expires: &str) -> String {
    format!("{{ sha256: {h}, issued: 2026-12-01, expires: {expires} }}")
}

#[test]
fn issue_creates_a_new_grant_file_holding_the_hash_only() {
    let dir = example();
    let i = issue(dir.path(), "dave", Kind::Human, Some("dave@example.com"), None, today()).unwrap();
    assert!(i.created);
    assert!(token::well_formed(&i.token));
    assert_eq!(i.sha256, token::sha256_hex(&i.token));
    assert_eq!(i.file, dir.path().join("grants/dave.yaml"));
    assert_eq!(i.identity, "dave@example.com");
    assert_eq!(i.expires, Some(Date::parse("2027-03-01").unwrap()), "90 days by default");
    let text = read(dir.path(), "grants/dave.yaml");
    assert!(text.contains(&i.sha256));
    assert!(!text.contains(&i.token));
    assert!(!all_text(dir.path()).contains(&i.token), "the token is nowhere in the repository");
    assert!(!all_text(dir.path()).contains(&i.token[3..20]), "not even a part of it");
    assert!(!format!("{i:?}").contains(&i.token), "Debug redacts the token");
    assert!(text.contains(&format!("  - {}\n", entry(&i.sha256, "2027-03-01"))), "{text}");
    let c = compiles(dir.path());
    let g = c.snapshot.grant_by_name("dave").unwrap();
    assert_eq!(g.identity, "dave@example.com");
    assert_eq!(g.owner.as_deref(), Some("dave@example.com"));
    assert_eq!(hexes(g), vec![i.sha256.clone()]);
    assert!(c.snapshot.grant_by_token_hash(&g.tokens[0].sha256).is_some());
}

#[test]
fn new_human_without_owner_and_new_agent() {
    let dir = example();
    let i = issue(dir.path(), "erin", Kind::Human, None, Some(Expiry::Never), today()).unwrap();
    assert_eq!(i.identity, "erin");
    assert_eq!(i.expires, None);
    let text = read(dir.path(), "grants/erin.yaml");
    assert!(!text.contains("owner:") && !text.contains("expires"), "{text}");

    let err = issue(dir.path(), "triage-bot", Kind::Agent, None, None, today()).unwrap_err();
    assert!(err.to_string().contains("--owner"), "{err}");
    assert!(!dir.path().join("grants/triage-bot.yaml").exists());
    let i = issue(dir.path(), "triage-bot", Kind::Agent, Some("alice@example.com"), Some(Expiry::Days(30)), today())
        .unwrap();
    assert_eq!(i.identity, "triage-bot");
    let c = compiles(dir.path());
    let g = c.snapshot.grant_by_name("triage-bot").unwrap();
    assert_eq!(g.owner.as_deref(), Some("alice@example.com"));
    assert_eq!(g.tokens[0].expires, Some(Date::parse("2026-12-31").unwrap()));
}

#[test]
fn a_second_token_is_appended_and_every_other_byte_is_kept() {
    let dir = example();
    let before = read(dir.path(), "grants/alice.yaml");
    let i = issue(dir.path(), "alice", Kind::Human, None, Some(Expiry::parse("12w").unwrap()), today()).unwrap();
    assert!(!i.created);
    assert_eq!(i.identity, "alice@example.com");
    let after = read(dir.path(), "grants/alice.yaml");
    let old = "  - { sha256: 1159bf80f41ccf3d5efafda50135b734fe094f032809efd1a5d85455c5359b40, issued: 2026-11-01, expires: 2027-11-01 }\n";
    let expected = before.replacen(old, &format!("{old}  - {}\n", entry(&i.sha256, "2027-02-23")), 1);
    assert_eq!(after, expected);
    assert!(after.contains("  # demo token \"demo-token-alice\""), "comments are kept");
    assert!(!after.contains(&i.token));
    let c = compiles(dir.path());
    assert_eq!(c.snapshot.grant_by_name("alice").unwrap().tokens.len(), 2);

    // A third one goes after the second.
    let j = issue(dir.path(), "alice", Kind::Human, Some("alice@example.com"), None, today()).unwrap();
    assert_ne!(i.token, j.token);
    let c = compiles(dir.path());
    assert_eq!(hexes(c.snapshot.grant_by_name("alice").unwrap())[1..], [i.sha256, j.sha256]);
}

#[test]
fn issue_refuses_a_kind_or_owner_that_contradicts_the_file() {
    let dir = example();
    let before = read(dir.path(), "grants/billing-bot.yaml");
    let err = issue(dir.path(), "billing-bot", Kind::Human, None, None, today()).unwrap_err();
    assert!(err.to_string().contains("kind agent"), "{err}");
    let err = issue(dir.path(), "billing-bot", Kind::Agent, Some("mallory@example.com"), None, today()).unwrap_err();
    assert!(err.to_string().contains("owner"), "{err}");
    assert_eq!(read(dir.path(), "grants/billing-bot.yaml"), before);
    issue(dir.path(), "billing-bot", Kind::Agent, Some("carol@example.com"), None, today()).unwrap();
}

#[test]
fn an_edit_that_would_invalidate_the_repository_is_undone() {
    let dir = example();
    // A new file whose identity another grant already has: the compiler refuses it.
    let err = issue(dir.path(), "alice2", Kind::Human, Some("alice@example.com"), None, today()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("already has a grant") && msg.contains("was not created"), "{msg}");
    assert!(!msg.contains("warning"), "only errors are listed: {msg}");
    assert!(!dir.path().join("grants/alice2.yaml").exists());
    assert!(
        !std::fs::read_dir(dir.path().join("grants"))
            .unwrap()
            .any(|e| { e.unwrap().file_name().to_string_lossy().contains("gatehouse-tmp") })
    );
    compiles(dir.path());
}

#[test]
fn an_invalid_repository_is_not_edited() {
    let dir = example();
    std::fs::write(dir.path().join("roles/broken.yaml"), "access: 3\n").unwrap();
    let err = issue(dir.path(), "dave", Kind::Human, None, None, today()).unwrap_err();
    assert!(err.to_string().contains("invalid before the edit"), "{err}");
    assert!(err.to_string().contains("roles/broken.yaml"), "{err}");
    assert!(!dir.path().join("grants/dave.yaml").exists());
}

#[test]
fn invalid_names_are_refused() {
    let dir = example();
    for name in ["", "../alice", "a/b", "Alice", ".hidden", "-x", "alice.yaml", "a b", &"a".repeat(65), "é"] {
        assert!(issue(dir.path(), name, Kind::Human, None, None, today()).is_err(), "{name:?}");
        assert!(revoke(dir.path(), name, None).is_err(), "{name:?}");
        assert!(review(dir.path(), name, "carol", today()).is_err(), "{name:?}");
    }
    for name in ["a", "0", "repo-reader-bot", "a.b_c-d", &"a".repeat(64)] {
        assert!(valid_name(name), "{name:?}");
    }
    assert!(
        issue(dir.path(), "../x", Kind::Human, None, None, today())
            .unwrap_err()
            .to_string()
            .contains("invalid grant name")
    );
}

#[test]
fn expiry_forms() {
    assert_eq!(Expiry::parse("90d"), Ok(Expiry::Days(90)));
    assert_eq!(Expiry::parse("12w"), Ok(Expiry::Days(84)));
    assert_eq!(Expiry::parse("never"), Ok(Expiry::Never));
    assert_eq!(Expiry::parse("2026-12-31"), Ok(Expiry::On(Date::parse("2026-12-31").unwrap())));
    for bad in ["0d", "90", "d", "3m", "2026-02-30", "99999d", "-1d", ""] {
        assert!(Expiry::parse(bad).is_err(), "{bad}");
    }
    let dir = example();
    let err = issue(dir.path(), "dave", Kind::Human, None, Some(Expiry::On(today())), today()).unwrap_err();
    assert!(err.to_string().contains("not after today"), "{err}");
}

#[test]
fn revoke_by_prefix_by_token_and_all() {
    let dir = example();
    let original = read(dir.path(), "grants/bob.yaml");
    let a = issue(dir.path(), "bob", Kind::Human, None, None, today()).unwrap();
    let b = issue(dir.path(), "bob", Kind::Human, None, None, today()).unwrap();
    let demo = hash("demo-token-bob");

    // By a prefix of the hash (as shown in the file and by revoke).
    let r = revoke(dir.path(), "bob", Some(&a.sha256[..10])).unwrap();
    assert_eq!(r.removed, vec![a.sha256[..SHOWN_HEX].to_string()]);
    assert_eq!(r.remaining, 2);
    let text = read(dir.path(), "grants/bob.yaml");
    assert!(!text.contains(&a.sha256) && text.contains(&b.sha256) && text.contains(&demo));
    assert_eq!(
        text,
        original.replacen(
            &format!("{demo}, issued: 2026-11-01, expires: 2027-11-01 }}\n"),
            &format!("{demo}, issued: 2026-11-01, expires: 2027-11-01 }}\n  - {}\n", entry(&b.sha256, "2027-03-01")),
            1
        )
    );

    // By the whole token (hashed; an opaque demo token works the same way).
    let r = revoke(dir.path(), "bob", Some(&b.token)).unwrap();
    assert_eq!(r.removed, vec![b.sha256[..SHOWN_HEX].to_string()]);
    assert_eq!(read(dir.path(), "grants/bob.yaml"), original);
    let r = revoke(dir.path(), "bob", Some("demo-token-bob")).unwrap();
    assert_eq!(r.removed, vec![demo[..SHOWN_HEX].to_string()]);
    assert_eq!(r.remaining, 0);
    let text = read(dir.path(), "grants/bob.yaml");
    assert!(text.contains("tokens: []\n  # demo token \"demo-token-bob\"\naccess:"), "{text}");
    let c = compiles(dir.path());
    assert!(c.snapshot.grant_by_name("bob").unwrap().tokens.is_empty());
    assert!(!c.snapshot.grant_by_name("bob").unwrap().access.is_empty(), "access entries stay");

    // Issuing into `tokens: []` makes it a list again.
    let c2 = issue(dir.path(), "bob", Kind::Human, None, None, today()).unwrap();
    let text = read(dir.path(), "grants/bob.yaml");
    assert!(text.contains(&format!("tokens:\n  - {}\n  # demo token", entry(&c2.sha256, "2027-03-01"))), "{text}");

    // Without a selector: every token.
    issue(dir.path(), "bob", Kind::Human, None, None, today()).unwrap();
    let r = revoke(dir.path(), "bob", None).unwrap();
    assert_eq!(r.removed.len(), 2);
    assert!(compiles(dir.path()).snapshot.grant_by_name("bob").unwrap().tokens.is_empty());
    let r = revoke(dir.path(), "bob", None).unwrap();
    assert!(r.removed.is_empty(), "revoking all of nothing is a no-op");
}

#[test]
fn revoke_refuses_ambiguous_short_unknown_and_broken_selectors() {
    let (h1, h2) = ("abcdef0123".to_string() + &hash("1")[10..], "abcdef0199".to_string() + &hash("2")[10..]);
    let grant = format!(
        "identity: zed\nkind: human\ntokens:\n  - {{ sha256: {h1} }}   # laptop\n  - {{ sha256: {h2} }}   # phone\naccess: []\n"
    );
    let dir = repo_with(&[("grants/zed.yaml", &grant)]);
    let err = revoke(dir.path(), "zed", Some("abcdef01")).unwrap_err().to_string();
    assert!(err.contains("ambiguous") && err.contains(&h1[..SHOWN_HEX]) && err.contains(&h2[..SHOWN_HEX]), "{err}");
    assert!(revoke(dir.path(), "zed", Some("abcdef0")).unwrap_err().to_string().contains("too short"));
    assert!(revoke(dir.path(), "zed", Some("ffffffffff")).unwrap_err().to_string().contains("no token"));
    let t = token::generate();
    let mut broken = t.clone().into_bytes();
    broken[10] = if broken[10] == b'a' { b'b' } else { b'a' };
    let broken = String::from_utf8(broken).unwrap();
    let err = revoke(dir.path(), "zed", Some(&broken)).unwrap_err().to_string();
    assert!(err.contains("checksum") && !err.contains(&broken), "{err}");
    let err = revoke(dir.path(), "zed", Some(&t)).unwrap_err().to_string();
    assert!(!err.contains(&t), "the token is not echoed: {err}");
    assert!(revoke(dir.path(), "nobody", None).unwrap_err().to_string().contains("no grant"));
    assert_eq!(read(dir.path(), "grants/zed.yaml"), grant);

    let r = revoke(dir.path(), "zed", Some(&h2[..10].to_ascii_uppercase())).unwrap();
    assert_eq!(r.removed, vec![h2[..SHOWN_HEX].to_string()]);
    assert_eq!(read(dir.path(), "grants/zed.yaml"), grant.replace(&format!("  - {{ sha256: {h2} }}   # phone\n"), ""));
    revoke(dir.path(), "zed", None).unwrap();
    assert_eq!(read(dir.path(), "grants/zed.yaml"), "identity: zed\nkind: human\ntokens: []\naccess: []\n");
}

#[test]
fn multi_line_entries_and_sequences_at_column_zero() {
    let (h1, h2) = (hash("1"), hash("2"));
    let grant = format!(
        "identity: zed\nkind: human\ntokens:   # keys\n- sha256: {h1}\n  # the laptop\n  issued: 2026-01-01\n- sha256: \"{h2}\"\n\n# access below\naccess: []\n"
    );
    let dir = repo_with(&[("grants/zed.yaml", &grant)]);
    let i = issue(dir.path(), "zed", Kind::Human, None, None, today()).unwrap();
    let text = read(dir.path(), "grants/zed.yaml");
    assert_eq!(
        text,
        grant.replace(&format!("\"{h2}\"\n"), &format!("\"{h2}\"\n- {}\n", entry(&i.sha256, "2027-03-01")))
    );
    revoke(dir.path(), "zed", Some(&h1[..8])).unwrap();
    let text = read(dir.path(), "grants/zed.yaml");
    assert_eq!(
        text,
        format!(
            "identity: zed\nkind: human\ntokens:   # keys\n- sha256: \"{h2}\"\n- {}\n\n# access below\naccess: []\n",
            entry(&i.sha256, "2027-03-01")
        )
    );
    revoke(dir.path(), "zed", None).unwrap();
    assert_eq!(
        read(dir.path(), "grants/zed.yaml"),
        "identity: zed\nkind: human\ntokens: []   # keys\n\n# access below\naccess: []\n"
    );
    compiles(dir.path());
}

#[test]
fn flow_sequences_are_edited_in_place() {
    let (h1, h2, h3) = (hash("1"), hash("2"), hash("3"));
    let grant = format!(
        "identity: zed\nkind: human\ntokens: [ {{ sha256: {h1} }}, {{sha256: '{h2}'}},\n  {{ sha256: {h3} }} ]  # three\naccess: []\n"
    );
    let dir = repo_with(&[("grants/zed.yaml", &grant)]);
    let i = issue(dir.path(), "zed", Kind::Human, None, None, today()).unwrap();
    let e = entry(&i.sha256, "2027-03-01");
    let text = read(dir.path(), "grants/zed.yaml");
    assert_eq!(text, grant.replace(&format!("{h3} }} ]"), &format!("{h3} }}, {e} ]")));
    revoke(dir.path(), "zed", Some(&h2)).unwrap();
    revoke(dir.path(), "zed", Some(&h1)).unwrap();
    let text = read(dir.path(), "grants/zed.yaml");
    assert_eq!(text, format!("identity: zed\nkind: human\ntokens: [ {{ sha256: {h3} }}, {e} ]  # three\naccess: []\n"));
    revoke(dir.path(), "zed", Some(&i.sha256[..12])).unwrap();
    assert_eq!(
        read(dir.path(), "grants/zed.yaml"),
        format!("identity: zed\nkind: human\ntokens: [ {{ sha256: {h3} }} ]  # three\naccess: []\n")
    );
    revoke(dir.path(), "zed", None).unwrap();
    assert_eq!(read(dir.path(), "grants/zed.yaml"), "identity: zed\nkind: human\ntokens: []  # three\naccess: []\n");
    let j = issue(dir.path(), "zed", Kind::Human, None, None, today()).unwrap();
    assert_eq!(
        read(dir.path(), "grants/zed.yaml"),
        format!("identity: zed\nkind: human\ntokens:  # three\n  - {}\naccess: []\n", entry(&j.sha256, "2027-03-01"))
    );
    compiles(dir.path());
}

#[test]
fn a_missing_tokens_key_is_added_before_access() {
    let grant = "identity: zed   # the zed team\nkind: human\n\n# what zed may reach\naccess: []\nreview: { on: 2026-01-01, by: carol }\n";
    let dir = repo_with(&[("grants/zed.yaml", grant)]);
    let i = issue(dir.path(), "zed", Kind::Human, None, None, today()).unwrap();
    assert_eq!(
        read(dir.path(), "grants/zed.yaml"),
        grant.replace("\n# what zed", &format!("\ntokens:\n  - {}\n# what zed", entry(&i.sha256, "2027-03-01")))
    );
    // No later key and no final newline: at the end.
    let dir = repo_with(&[("grants/zed.yaml", "identity: zed\nkind: human")]);
    let i = issue(dir.path(), "zed", Kind::Human, None, None, today()).unwrap();
    assert_eq!(
        read(dir.path(), "grants/zed.yaml"),
        format!("identity: zed\nkind: human\ntokens:\n  - {}\n", entry(&i.sha256, "2027-03-01"))
    );
}

#[test]
fn crlf_files_keep_their_line_breaks() {
    let h = hash("1");
    let grant = format!("identity: zed\r\nkind: human\r\ntokens:\r\n  - {{ sha256: {h} }}\r\naccess: []\r\n");
    let dir = repo_with(&[("grants/zed.yaml", &grant)]);
    let i = issue(dir.path(), "zed", Kind::Human, None, None, today()).unwrap();
    let text = read(dir.path(), "grants/zed.yaml");
    assert_eq!(text, grant.replace("access:", &format!("  - {}\r\naccess:", entry(&i.sha256, "2027-03-01"))));
    review(dir.path(), "zed", "carol", today()).unwrap();
    assert!(read(dir.path(), "grants/zed.yaml").ends_with("access: []\r\nreview: { on: 2026-12-01, by: carol }\r\n"));
    revoke(dir.path(), "zed", None).unwrap();
    assert_eq!(
        read(dir.path(), "grants/zed.yaml"),
        "identity: zed\r\nkind: human\r\ntokens: []\r\naccess: []\r\nreview: { on: 2026-12-01, by: carol }\r\n"
    );
}

#[test]
fn review_is_set_or_replaced() {
    let dir = example();
    let before = read(dir.path(), "grants/alice.yaml");
    let file = review(dir.path(), "alice", "dan@example.com", today()).unwrap();
    assert_eq!(file, dir.path().join("grants/alice.yaml"));
    assert_eq!(
        read(dir.path(), "grants/alice.yaml"),
        before.replace(
            "review: { on: 2026-11-20, by: carol@example.com }",
            "review: { on: 2026-12-01, by: dan@example.com }"
        )
    );
    let c = compiles(dir.path());
    let r = c.snapshot.grant_by_name("alice").unwrap().review.clone().unwrap();
    assert_eq!((r.on, r.by.as_str()), (today(), "dan@example.com"));

    // Odd reviewer ids are quoted.
    review(dir.path(), "alice", "Dan: security #1", today()).unwrap();
    assert!(read(dir.path(), "grants/alice.yaml").contains("review: { on: 2026-12-01, by: \"Dan: security #1\" }\n"));
    assert_eq!(
        compiles(dir.path()).snapshot.grant_by_name("alice").unwrap().review.as_ref().unwrap().by,
        "Dan: security #1"
    );
    assert!(review(dir.path(), "alice", "  ", today()).is_err());

    // A block mapping with a comment, followed by more keys.
    let grant = "identity: zed\nkind: human\nreview:   # yearly\n  on: 2026-01-01\n  by: carol\naccess: []\n";
    let dir = repo_with(&[("grants/zed.yaml", grant)]);
    review(dir.path(), "zed", "dan", today()).unwrap();
    assert_eq!(
        read(dir.path(), "grants/zed.yaml"),
        "identity: zed\nkind: human\nreview: { on: 2026-12-01, by: dan }   # yearly\naccess: []\n"
    );
    // A flow mapping with a trailing comment.
    let grant = "identity: zed\nkind: human\nreview: {on: 2026-01-01, by: carol}  # A.5.18\n";
    let dir = repo_with(&[("grants/zed.yaml", grant)]);
    review(dir.path(), "zed", "dan", today()).unwrap();
    assert_eq!(
        read(dir.path(), "grants/zed.yaml"),
        "identity: zed\nkind: human\nreview: { on: 2026-12-01, by: dan }  # A.5.18\n"
    );
    // None yet: appended.
    let dir = repo_with(&[("grants/zed.yaml", "identity: zed\nkind: human\n")]);
    review(dir.path(), "zed", "dan", today()).unwrap();
    assert_eq!(
        read(dir.path(), "grants/zed.yaml"),
        "identity: zed\nkind: human\nreview: { on: 2026-12-01, by: dan }\n"
    );
    assert!(review(dir.path(), "nobody", "dan", today()).is_err());
}

#[test]
fn yml_files_are_edited_and_json_files_refused() {
    let dir = repo_with(&[
        ("grants/zed.yml", "identity: zed\nkind: human\n"),
        ("grants/amy.json", "{\"identity\": \"amy\", \"kind\": \"human\"}"),
    ]);
    let i = issue(dir.path(), "zed", Kind::Human, None, None, today()).unwrap();
    assert!(!i.created);
    assert_eq!(i.file, dir.path().join("grants/zed.yml"));
    assert!(!dir.path().join("grants/zed.yaml").exists());
    let err = issue(dir.path(), "amy", Kind::Human, None, None, today()).unwrap_err();
    assert!(err.to_string().contains("JSON"), "{err}");
}

#[test]
fn scalars() {
    assert_eq!(scalar("alice@example.com"), "alice@example.com");
    assert_eq!(scalar("billing-bot"), "billing-bot");
    assert_eq!(scalar("yes"), "\"yes\"");
    assert_eq!(scalar("123"), "\"123\"");
    assert_eq!(scalar("a: b"), "\"a: b\"");
    assert_eq!(scalar("x\ny"), "\"x\\ny\"");
}
