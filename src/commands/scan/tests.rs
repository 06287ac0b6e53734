use std::collections::BTreeMap;

use super::*;

const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const C: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn declared(tools: &[(&str, Option<Category>, Option<&str>)]) -> BTreeMap<String, ToolInfo> {
    tools.iter().map(|(n, c, h)| (n.to_string(), ToolInfo { category: *c, sha256: h.map(str::to_string) })).collect()
}

fn pin(tool: &str, sha256: &str, category: Option<Category>) -> Pin {
    Pin { tool: tool.into(), sha256: sha256.into(), category }
}

fn edit(text: &str, d: &BTreeMap<String, ToolInfo>, pins: &[Pin]) -> String {
    edit_tools(text, "servers/files.yaml", d, pins).unwrap()
}

#[test]
fn flow_entries_get_pins_and_new_tools_line_up_keeping_comments() {
    let text = "name: files\ntools:   # reviewed by sec\n  read_file:  { category: read }   # safe\n  # a comment between entries\n  write_file: { category: write, sha256: AAAA }\npolicy: policies/x.yaml\n";
    let d = declared(&[("read_file", Some(Category::Read), None), ("write_file", Some(Category::Write), Some("AAAA"))]);
    let out = edit(text, &d, &[pin("read_file", A, None), pin("write_file", B, None), pin("delete_file", C, Some(Category::Destructive))]);
    assert_eq!(
        out,
        format!(
            "name: files\ntools:   # reviewed by sec\n  read_file:  {{ category: read, sha256: {A} }}   # safe\n  # a comment between entries\n  write_file: {{ category: write, sha256: {B} }}\n  delete_file: {{ category: destructive, sha256: {C} }}\npolicy: policies/x.yaml\n"
        )
    );
}

#[test]
fn new_entries_align_their_braces_with_the_existing_ones() {
    let text = "tools:\n  list_directory: { category: read }\n  read_file:      { category: read }\n";
    let d = declared(&[("list_directory", Some(Category::Read), None), ("read_file", Some(Category::Read), None)]);
    let out = edit(text, &d, &[pin("stat", A, Some(Category::Read))]);
    assert!(out.ends_with(&format!("  stat:           {{ category: read, sha256: {A} }}\n")), "{out}");
}

#[test]
fn a_missing_category_is_added_and_an_empty_entry_filled() {
    let text = "tools:\n  a: {}\n  b: { sha256: AAAA }\n";
    let d = declared(&[("a", None, None), ("b", None, Some("AAAA"))]);
    let out = edit(text, &d, &[pin("a", A, Some(Category::Read)), pin("b", B, Some(Category::Write))]);
    assert_eq!(out, format!("tools:\n  a: {{ category: read, sha256: {A} }}\n  b: {{ sha256: {B}, category: write }}\n"));
}

#[test]
fn block_entries_are_edited_line_by_line() {
    let text = "tools:\n  read_file:\n    category: read   # by hand\n    sha256: AAAA\n  stat:\n    category: read\nsupplier: { operated_by: internal }\n";
    let d = declared(&[("read_file", Some(Category::Read), Some("AAAA")), ("stat", Some(Category::Read), None)]);
    let out = edit(text, &d, &[pin("read_file", B, None), pin("stat", A, None)]);
    assert_eq!(
        out,
        format!("tools:\n  read_file:\n    category: read   # by hand\n    sha256: {B}\n  stat:\n    category: read\n    sha256: {A}\nsupplier: {{ operated_by: internal }}\n")
    );
}

#[test]
fn a_file_without_tools_gets_the_mapping_at_the_end() {
    let d = declared(&[]);
    let out = edit("name: files\ntransport: stdio", &d, &[pin("a", A, Some(Category::Read))]);
    assert!(out.starts_with("name: files\ntransport: stdio\ntools:"), "{out}");
    assert!(out.ends_with(&format!("\n  a: {{ category: read, sha256: {A} }}\n")), "{out}");
    let out = edit("name: files\ntools: {}   # none yet\nsupplier: {}\n", &d, &[pin("a", A, Some(Category::Read))]);
    assert_eq!(out, format!("name: files\ntools:   # none yet\n  a: {{ category: read, sha256: {A} }}\nsupplier: {{}}\n"));
}

#[test]
fn a_null_entry_becomes_a_flow_mapping() {
    let d = declared(&[("a", None, None)]);
    let out = edit("tools:\n  a:\n", &d, &[pin("a", A, Some(Category::Read))]);
    assert_eq!(out, format!("tools:\n  a: {{ category: read, sha256: {A} }}\n"));
}

#[test]
fn text_that_disagrees_with_the_parsed_file_is_not_edited() {
    let d = declared(&[("a", None, None), ("b", None, None)]);
    let e = edit_tools("tools:\n  a: {}\n", "servers/x.yaml", &d, &[pin("a", A, None)]).unwrap_err();
    assert!(e.to_string().contains("cannot edit servers/x.yaml safely"), "{e}");
    let e = edit_tools("tools: { a: {}, b: {} }\n", "servers/x.yaml", &d, &[pin("a", A, None)]).unwrap_err();
    assert!(e.to_string().contains("block mapping"), "{e}");
}

#[test]
fn hashes_that_could_read_as_numbers_are_quoted() {
    assert_eq!(hash_scalar(A), A);
    let digits = "1".repeat(64);
    assert_eq!(hash_scalar(&digits), format!("\"{digits}\""));
}

#[test]
fn secrets_in_headers_are_resolved() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k"), "v4lue\n").unwrap();
    let s = SecretSource { dir: Some(dir.path().to_path_buf()) };
    assert_eq!(resolve_secrets("Bearer ${secret:k}!", &s).unwrap(), "Bearer v4lue!");
    assert!(resolve_secrets("${secret:missing-one}", &s).unwrap_err().contains("missing-one"));
    let h = parse_headers(&["X-Key: ${secret:k}".into()], &s).unwrap();
    assert_eq!(h[0].0.as_str(), "x-key");
    assert!(parse_headers(&["no colon".into()], &s).is_err());
}
