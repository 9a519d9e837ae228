//! Chunker snapshots: one small fixture per language, cut with a small budget so that merging,
//! splitting and symbol paths all show. Each line of a snapshot is `first-last symbol`.

use expect_test::{Expect, expect};

use super::*;

const SMALL: Budget = Budget { max: 160, min: 40 };

fn render(path: &str, text: &str, budget: Budget) -> String {
    let chunks = chunk_file_with(path, Language::from_path(path), text, budget);
    check_invariants(text, &chunks, budget);
    chunks.iter().map(|c| format!("{}-{} {}\n", c.start_line, c.end_line, c.symbol)).collect()
}

fn check(path: &str, text: &str, expect: Expect) {
    expect.assert_eq(&render(path, text, SMALL));
}

/// What holds for every file: chunks are in order, never overlap, hold their exact bytes, cover
/// every non-blank line, and report line numbers that match their byte ranges.
fn check_invariants(text: &str, chunks: &[Chunk], budget: Budget) {
    check_coverage(text, chunks, Some(budget));
}

/// The invariants; with a budget, also that only a single line may exceed it (a heuristic of the
/// cutter's, not a safety property: the fuzzing below checks the rest).
fn check_coverage(text: &str, chunks: &[Chunk], budget: Option<Budget>) {
    let lines = LineIndex::new(text);
    let mut covered = vec![false; text.lines().count() + 1];
    let mut prev_end = 0;
    for c in chunks {
        assert!(c.start_byte >= prev_end, "overlap at {}", c.start_line);
        assert!(c.start_byte < c.end_byte);
        assert_eq!(c.text, &text[c.start_byte..c.end_byte]);
        assert_eq!(c.start_line, lines.line_of(c.start_byte) + 1);
        assert!(!c.text.trim().is_empty());
        for l in c.start_line..=c.end_line {
            covered[l as usize] = true;
        }
        prev_end = c.end_byte;
        // Only a single line (or a node on one line) may exceed the budget.
        if let Some(budget) = budget
            && c.text.len() > budget.max * 2
        {
            assert_eq!(c.start_line, c.end_line, "chunk {}-{} is {} bytes", c.start_line, c.end_line, c.text.len());
        }
    }
    for (i, line) in text.lines().enumerate() {
        assert!(line.trim().is_empty() || covered[i + 1], "line {} not covered: {line:?}", i + 1);
    }
}

#[test]
fn rust_impl_is_split_on_methods_with_doc_comments_attached() {
    check(
        "src/parser.rs",
        r#"use std::fmt;

/// A parser.
pub struct Parser {
    pos: usize,
}

impl Parser {
    /// Creates a parser.
    pub fn new() -> Self {
        Self { pos: 0 }
    }

    /// Parses an expression, which takes a while to explain
    /// because the doc comment is long enough to matter.
    #[inline]
    pub fn parse_expr(&mut self) -> usize {
        self.pos += 1;
        self.pos
    }
}

impl fmt::Display for Parser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "parser at {}", self.pos)
    }
}
"#,
        expect![[r#"
            1-6 struct Parser
            8-12 impl Parser > fn new
            14-20 impl Parser > fn parse_expr
            21-27 impl fmt::Display for Parser
        "#]],
    );
}

#[test]
fn python_classes_methods_and_decorators() {
    check(
        "app/models.py",
        r#"import os


class Repo:
    """A repository on disk."""

    def __init__(self, root):
        self.root = root

    @property
    def name(self):
        return os.path.basename(self.root)

    def files(self):
        return [f for f in os.listdir(self.root) if not f.startswith(".")]


def main():
    print(Repo(".").name)
"#,
        expect![[r#"
            1-8 class Repo > def __init__
            10-12 class Repo > def name
            14-19 class Repo > def files; def main
        "#]],
    );
}

#[test]
fn javascript_and_typescript() {
    check(
        "web/api.js",
        r#"// Fetches a user.
export async function getUser(id) {
  const res = await fetch(`/api/users/${id}`);
  return res.json();
}

class Cache {
  constructor() { this.map = new Map(); }
  get(key) { return this.map.get(key); }
  set(key, value) { this.map.set(key, value); return this; }
}
"#,
        expect![[r#"
            1-5 function getUser
            7-11 class Cache
        "#]],
    );
    check(
        "web/types.ts",
        r#"export interface User {
  id: number;
  name: string;
}

export type Id = number | string;

export enum Role { Admin, Member }

export function isAdmin(user: User, roles: Map<Id, Role>): boolean {
  return roles.get(user.id) === Role.Admin;
}
"#,
        expect![[r#"
            1-8 interface User, type Id, enum Role
            10-12 function isAdmin
        "#]],
    );
}

#[test]
fn go_methods_carry_their_receiver() {
    check(
        "pkg/store.go",
        r#"package store

type Store struct {
	items map[string]int
}

func (s *Store) Get(key string) (int, bool) {
	v, ok := s.items[key]
	return v, ok
}

func New() *Store {
	return &Store{items: map[string]int{}}
}
"#,
        expect![[r#"
            1-10 type Store, func Store.Get
            12-14 func New
        "#]],
    );
}

#[test]
fn java_c_and_cpp() {
    check(
        "src/Main.java",
        r#"package app;

public class Main {
    private final int x;

    public Main(int x) {
        this.x = x;
    }

    public int twice() {
        return x * 2;
    }
}
"#,
        expect![[r#"
            1-13 class Main
        "#]],
    );
    check(
        "src/list.c",
        r#"#include <stdlib.h>

struct node {
    int value;
    struct node *next;
};

static struct node *push(struct node *head, int value) {
    struct node *n = malloc(sizeof *n);
    n->value = value;
    n->next = head;
    return n;
}
"#,
        expect![[r#"
            1-6 struct node
            8-13 fn push
        "#]],
    );
    check(
        "src/shape.cpp",
        r#"namespace geo {

class Shape {
public:
    virtual ~Shape() = default;
    virtual double area() const = 0;
};

double Circle::area() const {
    return 3.14159 * r * r;
}

}
"#,
        expect![[r#"
            1-13 namespace geo
        "#]],
    );
}

#[test]
fn text_files_fall_back_to_line_windows() {
    check(
        "README.md",
        "# Title\n\nSome words about the project that go on for a while.\n\n## Usage\n\nRun it like this, with the flags described below, and read the output.\n\nMore text that fills the window beyond its budget.\n",
        expect![[r#"
            1-8 
            9-9 
        "#]],
    );
}

#[test]
fn bad_input_never_panics() {
    for (path, text) in [
        ("empty.rs", ""),
        ("blank.py", "\n\n   \n"),
        ("broken.rs", "fn main( { let x = ; impl for }}}} /* unterminated"),
        ("crlf.rs", "fn a() {\r\n    1\r\n}\r\n\r\nfn b() {\r\n    2\r\n}\r\n"),
        ("unicode.go", "package é\n\nfunc 世界() string { return \"🌍\" }\n"),
        ("one_line.js", &format!("const s = \"{}\";\n", "x".repeat(1000))),
    ] {
        let rendered = render(path, text, SMALL);
        if text.trim().is_empty() {
            assert!(rendered.is_empty(), "{path}: {rendered}");
        } else {
            assert!(!rendered.is_empty(), "{path} produced no chunks");
        }
    }
}

#[test]
fn default_budget_keeps_small_files_whole_and_ids_stable() {
    let text = "fn a() -> u32 {\n    1\n}\n\nfn b() -> u32 {\n    2\n}\n";
    let chunks = chunk_file("src/x.rs", Language::Rust, text);
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].symbol, "fn a, fn b");
    assert_eq!((chunks[0].start_line, chunks[0].end_line), (1, 7));
    assert_eq!(chunks, chunk_file("src/x.rs", Language::Rust, text));
    assert_ne!(chunks[0].id, chunk_file("src/y.rs", Language::Rust, text)[0].id);
    assert_eq!(chunks[0].content_hash, chunk_file("src/y.rs", Language::Rust, text)[0].content_hash);
}

#[test]
fn a_large_rust_file_respects_the_default_budget() {
    let mut text = String::new();
    for i in 0..200 {
        text.push_str(&format!(
            "/// Adds {i}.\npub fn add_{i}(x: u64) -> u64 {{\n    let y = x + {i};\n    y * 2\n}}\n\n"
        ));
    }
    let chunks = chunk_file("src/many.rs", Language::Rust, &text);
    check_invariants(&text, &chunks, Budget::default());
    assert!(chunks.len() > 10);
    assert!(chunks.iter().all(|c| c.text.trim().len() <= MAX_CHUNK_BYTES));
    assert_eq!(chunks[0].symbol, "fn add_0, fn add_1, fn add_2 (+13 more)"); // add_0..=add_15
    // Doc comments stay with their function: no chunk ends with a doc comment line.
    assert!(chunks.iter().all(|c| !c.text.trim_end().lines().last().unwrap().starts_with("///")));
}


/// 100,000 levels of nesting (parentheses, and a chain of binary operators) in every language:
/// the file is cut into line windows instead of overflowing the stack, on a thread with the
/// default 2 MiB stack of a test thread (the indexer's workers have no more).
#[test]
fn deeply_nested_files_fall_back_to_line_windows() {
    const LEVELS: usize = 100_000;
    let parens = format!("{}1{}", "(".repeat(LEVELS), ")".repeat(LEVELS));
    let chain = format!("1{}", " + 1".repeat(LEVELS));
    let wrap = |path: &str, expr: &str| -> String {
        match path.rsplit('.').next().unwrap() {
            "rs" => format!("fn f() -> i32 {{\n    let x = {expr};\n    x\n}}\n"),
            "py" => format!("def f():\n    x = {expr}\n    return x\n"),
            "js" | "ts" => format!("function f() {{\n  const x = {expr};\n  return x;\n}}\n"),
            "go" => format!("package p\n\nfunc f() int {{\n\tx := {expr}\n\treturn x\n}}\n"),
            "c" | "cpp" => format!("int f(void) {{\n    int x = {expr};\n    return x;\n}}\n"),
            "java" => format!("class A {{\n    int f() {{\n        int x = {expr};\n        return x;\n    }}\n}}\n"),
            other => panic!("{other}"),
        }
    };
    let handle = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            for path in ["a.rs", "a.py", "a.js", "a.ts", "a.go", "a.c", "a.cpp", "A.java"] {
                for expr in [&parens, &chain] {
                    let text = wrap(path, expr);
                    let language = Language::from_path(path);
                    assert!(parse(language, &text).is_none(), "{path}: a tree this deep is not used");
                    let chunks = chunk_file(path, language, &text);
                    assert!(!chunks.is_empty(), "{path}");
                    check_invariants(&text, &chunks, Budget::default());
                }
            }
        })
        .unwrap();
    handle.join().expect("no stack overflow, no panic");
}

#[test]
fn ordinary_trees_are_shallow_enough() {
    let text = "fn main() {\n    let v = vec![(1, (2, (3, 4)))];\n    if v.is_empty() { return; }\n}\n";
    let tree = parse(Language::Rust, text).expect("parsed");
    let depth = tree_depth(&tree, usize::MAX);
    assert!((5..MAX_TREE_DEPTH).contains(&depth), "{depth}");
}

/// Property: any text, in any language, chunks without a panic or a stack overflow, in order,
/// without overlaps, byte-exact, covering every non-blank line. Cases: `PROPTEST_CASES` (64 by default; the fuzzing runs in the README used more).
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    /// Code-like text: fragments that open and close structures, nest, and break the grammar.
    fn code() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("fn f() {".to_owned()),
            Just("}".to_owned()),
            Just("(".to_owned()),
            Just(")".to_owned()),
            Just("[".to_owned()),
            Just("]".to_owned()),
            Just("\n".to_owned()),
            Just("    ".to_owned()),
            Just("def g(x):\n".to_owned()),
            Just("class A:\n".to_owned()),
            Just("\"".to_owned()),
            Just("/*".to_owned()),
            Just("x + ".to_owned()),
            Just("é🦀".to_owned()),
            "[a-z_]{1,8}".prop_map(|s| s),
            any::<char>().prop_map(|c| c.to_string()),
            (1usize..3_000).prop_map(|n| "(".repeat(n)),
        ];
        proptest::collection::vec(piece, 0..200).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn any_text_chunks_within_the_invariants(text in code(), lang in 0usize..9) {
            let path = ["a.rs", "a.py", "a.js", "a.ts", "a.go", "a.c", "a.cpp", "A.java", "a.txt"][lang];
            let chunks = chunk_file(path, Language::from_path(path), &text);
            check_coverage(&text, &chunks, None);
        }
    }
}

/// Found by the property test below: tree-sitter leaves what follows an unterminated comment
/// outside every node; it must still be in a chunk.
#[test]
fn text_outside_every_node_is_still_chunked() {
    let text = "(((((((/*def g(x):\n/";
    let chunks = chunk_file("a.rs", Language::Rust, text);
    check_invariants(text, &chunks, Budget::default());
}
