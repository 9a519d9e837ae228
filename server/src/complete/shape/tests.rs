use super::*;

/// Splits a fixture at `$0`.
fn at_cursor(fixture: &str) -> (String, usize) {
    let offset = fixture.find("$0").expect("fixture has $0");
    (fixture.replacen("$0", "", 1), offset)
}

fn check_mode(language: Language, fixture: &str, expected: Option<Mode>) {
    let (text, offset) = at_cursor(fixture);
    assert_eq!(decide(language, &text, offset), expected, "{fixture}");
}

#[test]
fn mid_line_is_not_completed() {
    check_mode(Language::Rust, "fn main() {\n    let x = $0foo;\n}\n", None);
}

#[test]
fn end_of_a_non_blank_line_is_one_line() {
    check_mode(Language::Rust, "fn main() {\n    let x = $0\n}\n", Some(Mode::SingleLine));
    check_mode(Language::Rust, "fn main() {\n    call($0);\n}\n", Some(Mode::SingleLine));
}

#[test]
fn blank_line_in_a_block_is_a_block() {
    check_mode(Language::Rust, "fn main() {\n    $0\n}\n", Some(Mode::MultiLine));
    check_mode(Language::Python, "def f(x):\n    $0\n", Some(Mode::MultiLine));
    check_mode(Language::Rust, "$0", Some(Mode::MultiLine));
}

#[test]
fn blank_line_inside_arguments_is_one_line() {
    check_mode(Language::Rust, "fn main() {\n    call(\n        a,\n        $0\n    );\n}\n", Some(Mode::SingleLine));
}

#[test]
fn a_huge_document_is_decided_from_a_window_around_the_cursor() {
    // 3 MB of functions; the cursor in a call's arguments near the end, and on a blank line of a body.
    let filler = "fn filler(a: u32) -> u32 {\n    a + 1\n}\n".repeat(80_000);
    let fixture = format!("{filler}fn main() {{\n    call(\n        a,\n        $0\n    );\n}}\n{filler}");
    check_mode(Language::Rust, &fixture, Some(Mode::SingleLine));
    let fixture = format!("{filler}fn main() {{\n    $0\n}}\n{filler}");
    check_mode(Language::Rust, &fixture, Some(Mode::MultiLine));
    let whole = fixture.replace("$0", "");
    let (window, at) = parse_window(&whole, fixture.find("$0").unwrap());
    assert!(window.len() <= PARSE_BEFORE + PARSE_AFTER, "{}", window.len());
    assert!(window.starts_with("fn filler") || window.starts_with("    a + 1") || window.starts_with('}'), "cut at a line start");
    assert_eq!(&window[at - 5..at], "\n    ");
    // A 10,000-character line, the cursor at offset 0 and at the end: answers, never a panic.
    let long_line = format!("let s = \"{}\";\n", "é".repeat(5_000));
    check_mode(Language::Rust, &format!("{long_line}$0"), Some(Mode::MultiLine));
    check_mode(Language::Rust, &format!("$0{long_line}"), None);
    check_mode(Language::Rust, &format!("{filler}{long_line}$0"), Some(Mode::MultiLine));
}

fn check_cut(mode: Mode, fixture: &str, raw: &str, expected: &str, done: bool) {
    let (text, offset) = at_cursor(fixture);
    let cursor = Cursor::new(&text, offset);
    let (kept, stopped) = cut(mode, raw, &cursor, Limits { max_lines: 5 });
    assert_eq!((kept.as_str(), stopped), (expected, done), "{raw:?}");
}

#[test]
fn one_line_stops_at_the_newline() {
    check_cut(Mode::SingleLine, "let x = $0", "a + b;\nlet y = 2;", "a + b;", true);
    check_cut(Mode::SingleLine, "let x = $0", "a + ", "a + ", false);
}

#[test]
fn a_block_stops_when_indentation_leaves_it() {
    let fixture = "fn f() {\n    $0\n}\n";
    check_cut(Mode::MultiLine, fixture, "let a = 1;\n    a + 1\n}\n\nfn g() {}", "let a = 1;\n    a + 1", true);
    check_cut(Mode::MultiLine, fixture, "let a = 1;\n    a", "let a = 1;\n    a", false);
}

#[test]
fn a_block_stops_before_repeating_the_next_line() {
    let fixture = "def f(x):\n    $0\n    return y\n";
    check_cut(Mode::MultiLine, fixture, "y = x * 2\n    return y\n", "y = x * 2", true);
}

#[test]
fn a_block_stops_at_the_line_limit() {
    let raw: String = (0..10).map(|i| format!("let a{i} = {i};\n    ")).collect();
    let (text, offset) = at_cursor("fn f() {\n    $0\n}\n");
    let (kept, done) = cut(Mode::MultiLine, &raw, &Cursor::new(&text, offset), Limits { max_lines: 3 });
    assert!(done);
    assert_eq!(kept.lines().count(), 3, "{kept}");
}

fn check_finish(mode: Mode, fixture: &str, completion: &str, expected: &str) {
    let (text, offset) = at_cursor(fixture);
    assert_eq!(finish(mode, completion, &Cursor::new(&text, offset)), expected);
}

#[test]
fn closers_the_line_already_has_are_dropped() {
    check_finish(Mode::SingleLine, "foo($0)", "a, b)", "a, b");
    check_finish(Mode::SingleLine, "foo($0);", "a, b);", "a, b");
    // Balanced brackets are the completion's own.
    check_finish(Mode::SingleLine, "foo($0)", "bar(baz())", "bar(baz())");
    // An unmatched closer the line does not have closes something in the prefix: kept.
    check_finish(Mode::SingleLine, "foo(bar($0", "1))", "1))");
}

#[test]
fn repeating_the_suffix_is_dropped() {
    check_finish(Mode::MultiLine, "fn f() {\n    $0\n    ok(())\n}\n", "let a = 1;\n    ok(())", "let a = 1;");
    check_finish(Mode::SingleLine, "x = [$0]", "]", "");
}

#[test]
fn a_second_start_stops_where_it_copies_the_lines_that_follow() {
    let suffix = "\n    c: u8,\n    d: u8,\n}\n";
    assert_eq!(before_suffix_lines("b: u8,\n    d: u8,\n}", suffix), "b: u8,");
    assert_eq!(before_suffix_lines("d: u8,\n    e: u8,", suffix), "", "a copy from its first line");
    assert_eq!(before_suffix_lines("b: u8,\n\n    e: u8,", suffix), "b: u8,\n\n    e: u8,", "nothing copied");
    // The rest of the cursor's own line is not a line that follows.
    assert_eq!(before_suffix_lines("x", "x\nfoo"), "x");
    // A closer is every block's: a block the second start opens keeps its own.
    assert_eq!(before_suffix_lines("if ready {\n        go();\n    }", "\n    done();\n}\n"), "if ready {\n        go();\n    }");
}

#[test]
fn trailing_whitespace_is_trimmed() {
    check_finish(Mode::SingleLine, "let x = $0", "1;   ", "1;");
}

#[test]
fn a_loop_is_stopped_after_its_first_copy() {
    let raw = "tokio_unstable, tokio_unstable, tokio_unstable, tokio_unstable, ";
    check_cut(Mode::SingleLine, "#[cfg(all($0", raw, "tokio_unstable, ", true);
    // Three copies are not yet a loop; ordinary repetition in code stays.
    check_cut(Mode::SingleLine, "let v = $0", "[0, 0, 0]", "[0, 0, 0]", false);
    check_cut(Mode::SingleLine, "let s = $0", "\"----\"", "\"----\"", false);
    let block = "fn f() {\n    $0\n}\n";
    check_cut(Mode::MultiLine, block, "a();\n    a();\n    a();\n    a();\n    ", "a();\n    ", true);
}

#[test]
fn accepting_a_line_and_pressing_enter_keeps_or_deepens_the_indentation() {
    let (text, at) = at_cursor("fn main() {\n    let total = $0\n}\n");
    let (next, cursor) = after_accepting(Language::Rust, &text, at, "prices.iter().sum();").unwrap();
    assert_eq!(next, "fn main() {\n    let total = prices.iter().sum();\n    \n}\n");
    assert_eq!(&next[cursor..], "\n}\n");

    // After an opening brace, one unit deeper: the file's unit (2 spaces here), or a tab.
    let (text, at) = at_cursor("fn main() {\n  let a = 1;\n  if a > 0 $0\n}\n");
    let (next, cursor) = after_accepting(Language::Rust, &text, at, "{").unwrap();
    assert!(next[..cursor].ends_with("  if a > 0 {\n    "), "{next:?}");
    let (text, at) = at_cursor("fn main() {\n\tfor x in xs $0\n}\n");
    let (next, cursor) = after_accepting(Language::Rust, &text, at, "{").unwrap();
    assert!(next[..cursor].ends_with("{\n\t\t"), "{next:?}");
    // A doc comment's ` * ` lines are not the unit; a CRLF file gets CRLF.
    let (text, at) = at_cursor("class A {\n    /**\n     * Docs.\n     */\n    void f() $0\r\n}\r\n");
    let (next, cursor) = after_accepting(Language::Java, &text, at, "{").unwrap();
    assert!(next[..cursor].ends_with("void f() {\r\n        "), "{next:?}");
    let (text, at) = at_cursor("def f(xs):\n    for x in $0\n");
    let (next, cursor) = after_accepting(Language::Python, &text, at, "xs:").unwrap();
    assert!(next[..cursor].ends_with("for x in xs:\n        "), "{next:?}");
}

#[test]
fn no_next_line_when_the_suggestion_is_a_block_or_text_follows_the_cursor() {
    let (text, at) = at_cursor("fn main() {\n    call($0);\n}\n");
    assert_eq!(after_accepting(Language::Rust, &text, at, "x"), None);
    let (text, at) = at_cursor("fn main() {\n    $0\n}\n");
    assert_eq!(after_accepting(Language::Rust, &text, at, "let a = 1;\n    let b = 2;"), None);
    assert_eq!(after_accepting(Language::Rust, &text, at, "   "), None);
}
