//! Source positions for every node of a YAML or JSON file, by JSON pointer.
//!
//! serde gives line and column only for syntax and type errors. Semantic errors found later
//! ("unknown server", "regex does not compile") must point at the offending line too, so a file
//! with a diagnostic is walked with yaml-rust2's event parser, which reports a marker per node
//! (`load::Doc` builds the locator on first use: a valid file is never walked). JSON is read the
//! same way (a JSON text is a YAML flow document). The walk also places duplicate mapping keys,
//! which the serde pass only notices (the last one wins there).

use std::collections::{HashMap, HashSet};

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

use crate::diag::Pos;

/// Positions of the nodes of one document, keyed by JSON pointer (`/tools/query/deny_if/0`).
#[derive(Debug, Default)]
pub struct Locator {
    /// pointer → (position of the mapping key naming the node, if any; position of the value).
    nodes: HashMap<String, (Option<Pos>, Pos)>,
    /// Keys that appear twice in one mapping: (pointer of the second one, its position).
    pub duplicates: Vec<(String, Pos)>,
}

enum Frame {
    Map { ptr: String, key: Option<(String, Pos)>, seen: HashSet<String> },
    Seq { ptr: String, next: usize },
}

struct Walker {
    loc: Locator,
    stack: Vec<Frame>,
    done: bool,
}

/// Escapes one JSON-pointer segment (RFC 6901).
pub fn escape(seg: &str) -> String {
    seg.replace('~', "~0").replace('/', "~1")
}

// === impl Locator ===

impl Locator {
    /// Walks `text`. Syntax errors are ignored here: serde reports them with their position.
    pub fn new(text: &str) -> Locator {
        let mut w = Walker { loc: Locator::default(), stack: Vec::new(), done: false };
        let mut parser = Parser::new_from_str(text);
        let _ = parser.load(&mut w, false);
        w.loc
    }

    /// Position of the node at `ptr`: its key when it has one (that is where a reader looks for
    /// "field X is wrong"), else the value. Falls back to the nearest ancestor that exists, so a
    /// missing field points at the mapping that lacks it.
    pub fn at(&self, ptr: &str) -> Pos {
        self.find(ptr, |(k, v)| k.unwrap_or(v))
    }

    /// Position of the value of the node at `ptr` (with the same fallback as [`Locator::at`]).
    pub fn value(&self, ptr: &str) -> Pos {
        self.find(ptr, |(_, v)| v)
    }

    fn find(&self, ptr: &str, pick: impl Fn((Option<Pos>, Pos)) -> Pos) -> Pos {
        let mut p = ptr;
        loop {
            if let Some(&n) = self.nodes.get(p) {
                return pick(n);
            }
            match p.rfind('/') {
                Some(i) => p = &p[..i],
                None => return Pos { line: 1, col: 1 },
            }
        }
    }
}

fn pos(m: Marker) -> Pos {
    // yaml-rust2 markers: 1-based line, 0-based column.
    Pos { line: m.line(), col: m.col() + 1 }
}

// === impl Walker ===

impl Walker {
    /// Called for every node start; returns the pointer of the new node, or None if the node is
    /// a mapping key (recorded as the pending key).
    fn enter(&mut self, ev: &Event, at: Pos) -> Option<String> {
        match self.stack.last_mut() {
            None => {
                self.loc.nodes.insert(String::new(), (None, at));
                Some(String::new())
            }
            Some(Frame::Seq { ptr, next }) => {
                let p = format!("{ptr}/{next}");
                *next += 1;
                self.loc.nodes.insert(p.clone(), (None, at));
                Some(p)
            }
            Some(Frame::Map { ptr, key, seen }) => match key.take() {
                None => {
                    let k = match ev {
                        Event::Scalar(s, ..) => s.clone(),
                        _ => "?".to_string(), // complex keys are rejected by serde anyway
                    };
                    let p = format!("{ptr}/{}", escape(&k));
                    // A block mapping's start marker sits on its first `:`; a reader looks for
                    // the mapping where its first key begins.
                    if seen.is_empty()
                        && let Some(node) = self.loc.nodes.get_mut(ptr.as_str()) {
                            node.1 = node.1.min(at);
                        }
                    if !seen.insert(k.clone()) {
                        self.loc.duplicates.push((p, at));
                    }
                    *key = Some((k, at));
                    None
                }
                Some((k, kpos)) => {
                    let p = format!("{ptr}/{}", escape(&k));
                    self.loc.nodes.entry(p.clone()).or_insert((Some(kpos), at));
                    Some(p)
                }
            },
        }
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.done {
            return;
        }
        let at = pos(mark);
        match ev {
            Event::Scalar(..) | Event::Alias(_) => {
                self.enter(&ev, at);
            }
            Event::MappingStart(..) => {
                if let Some(ptr) = self.enter(&ev, at) {
                    self.stack.push(Frame::Map { ptr, key: None, seen: HashSet::new() });
                } else {
                    // A mapping used as a key: walk it under a throwaway pointer.
                    self.stack.push(Frame::Map { ptr: "/?".into(), key: None, seen: HashSet::new() });
                }
            }
            Event::SequenceStart(..) => {
                let ptr = self.enter(&ev, at).unwrap_or_else(|| "/?".into());
                self.stack.push(Frame::Seq { ptr, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::DocumentEnd => self.done = true,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_positions_point_at_keys_and_values() {
        let text = "version: \"1\"\ntools:\n  query:\n    deny_if:\n      - conditions:\n          - { path: args.sql, op: regx, value: x }\n";
        let l = Locator::new(text);
        assert_eq!(l.at("/tools"), Pos { line: 2, col: 1 });
        assert_eq!(l.at("/tools/query/deny_if"), Pos { line: 4, col: 5 });
        assert_eq!(l.at("/tools/query/deny_if/0/conditions/0/op"), Pos { line: 6, col: 31 });
        assert_eq!(l.value("/tools/query/deny_if/0/conditions/0/op"), Pos { line: 6, col: 35 });
        // missing nodes fall back to the nearest ancestor
        assert_eq!(l.at("/tools/query/rules/3"), Pos { line: 3, col: 3 });
    }

    #[test]
    fn json_positions_and_duplicate_keys() {
        let text = "{ \"version\": \"1\",\n  \"tools\": { \"a\": {},\n    \"a\": {} } }";
        let l = Locator::new(text);
        assert_eq!(l.at("/tools/a"), Pos { line: 2, col: 14 });
        assert_eq!(l.duplicates, vec![("/tools/a".to_string(), Pos { line: 3, col: 5 })]);
    }
}
