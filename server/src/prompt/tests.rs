use expect_test::{Expect, expect};

use super::*;

fn snippet(path: &str, text: &str) -> Snippet {
    Snippet { path: path.into(), start_line: 1, end_line: text.lines().count() as u32, text: text.into(), source: Source::Retrieved }
}

fn check(family: Family, snippets: &[Snippet], expect: Expect) {
    let input = FimInput {
        repo: "shop",
        path: "src/cart.rs",
        prefix: "fn total(c: &Cart) -> u64 {\n    ",
        suffix: "\n}\n",
        snippets,
    };
    let prompt = fim(family, &input, 1_000);
    expect.assert_eq(&prompt.text);
}

#[test]
fn qwen_repo_level_format_puts_the_best_snippet_last() {
    let snippets = [snippet("src/price.rs", "pub fn price(i: &Item) -> u64 { i.cents }\n"), snippet("src/item.rs", "pub struct Item { cents: u64 }\n")];
    check(
        Family::QwenCoder,
        &snippets,
        expect![[r#"
            <|repo_name|>shop
            <|file_sep|>src/item.rs
            pub struct Item { cents: u64 }
            <|file_sep|>src/price.rs
            pub fn price(i: &Item) -> u64 { i.cents }
            <|file_sep|>src/cart.rs
            <|fim_prefix|>fn total(c: &Cart) -> u64 {
                <|fim_suffix|>
            }
            <|fim_middle|>"#]],
    );
}

#[test]
fn qwen_without_context_is_file_level_fim() {
    check(
        Family::QwenCoder,
        &[],
        expect![[r#"
            <|fim_prefix|>fn total(c: &Cart) -> u64 {
                <|fim_suffix|>
            }
            <|fim_middle|>"#]],
    );
}

#[test]
fn every_family_renders() {
    let snippets = [snippet("src/price.rs", "pub fn price() -> u64 {\n\n    1\n}\n")];
    let all: String = Family::ALL
        .iter()
        .map(|&f| {
            let input = FimInput { repo: "shop", path: "src/cart.rs", prefix: "let x = ", suffix: ";\n", snippets: &snippets };
            format!("== {f:?}\n{}\n", fim(f, &input, 1_000).text)
        })
        .collect();
    expect![[r#"
        == QwenCoder
        <|repo_name|>shop
        <|file_sep|>src/price.rs
        pub fn price() -> u64 {

            1
        }
        <|file_sep|>src/cart.rs
        <|fim_prefix|>let x = <|fim_suffix|>;
        <|fim_middle|>
        == StarCoder2
        <repo_name>shop
        <file_sep>src/price.rs
        pub fn price() -> u64 {

            1
        }
        <file_sep>src/cart.rs
        <fim_prefix>let x = <fim_suffix>;
        <fim_middle>
        == DeepseekCoder
        <｜fim▁begin｜>// src/price.rs
        // pub fn price() -> u64 {
        //
        //     1
        // }

        // src/cart.rs
        let x = <｜fim▁hole｜>;
        <｜fim▁end｜>
        == CodeLlama
        <PRE> // src/price.rs
        // pub fn price() -> u64 {
        //
        //     1
        // }

        // src/cart.rs
        let x =  <SUF>;
         <MID>
        == Codestral
        [SUFFIX];
        [PREFIX]// src/price.rs
        // pub fn price() -> u64 {
        //
        //     1
        // }

        // src/cart.rs
        let x = 
        == CodeGemma
        <|file_separator|>src/price.rs
        pub fn price() -> u64 {

            1
        }
        <|file_separator|>src/cart.rs
        <|fim_prefix|>let x = <|fim_suffix|>;
        <|fim_middle|>
        == Plain
        // src/price.rs
        // pub fn price() -> u64 {
        //
        //     1
        // }

        // src/cart.rs
        let x = 
    "#]]
    .assert_eq(&all);
}

#[test]
fn family_is_detected_from_model_names() {
    let cases = [
        ("qwen2.5-coder-0.5b", Family::QwenCoder),
        ("Qwen2.5-Coder-7B-Instruct-Q4_K_M.gguf", Family::QwenCoder),
        ("starcoder2:3b", Family::StarCoder2),
        ("deepseek-coder-6.7b-base", Family::DeepseekCoder),
        ("codellama:7b-code", Family::CodeLlama),
        ("codestral-latest", Family::Codestral),
        ("codegemma:2b", Family::CodeGemma),
        ("smollm2-135m", Family::Plain),
        ("qwen2.5-7b-instruct", Family::Plain),
        ("hf:Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF/qwen2.5-coder-0.5b-instruct-q8_0.gguf", Family::QwenCoder),
        // A path: the file and its directory name the model, the folders above do not.
        ("models/Qwen2.5-Coder-7B/model-q4.gguf", Family::QwenCoder),
        ("/home/me/qwen-coder-tools/models/starcoder2-3b.gguf", Family::StarCoder2),
        ("/home/me/deepseek-coder-x/models/codellama-7b.gguf", Family::CodeLlama),
        ("/work/qwen-coder/models/mystery.gguf", Family::Plain),
        ("C:\\Users\\me\\qwen-coder\\models\\smollm2.gguf", Family::Plain),
    ];
    for (name, family) in cases {
        assert_eq!(Family::detect(name), family, "{name}");
    }
}

#[test]
fn budget_keeps_the_end_of_the_prefix_and_the_start_of_the_suffix() {
    let prefix: String = (0..200).map(|i| format!("let a{i} = {i};\n")).collect();
    let suffix: String = (0..200).map(|i| format!("let b{i} = {i};\n")).collect();
    let input = FimInput { repo: "r", path: "a.rs", prefix: &prefix, suffix: &suffix, snippets: &[] };
    let prompt = fim(Family::QwenCoder, &input, 200);
    assert!(prompt.prefix_bytes < prefix.len() && prompt.prefix_bytes > 0);
    assert!(prefix.ends_with(&prefix[prefix.len() - prompt.prefix_bytes..]));
    // Whole lines only.
    assert!(prefix[prefix.len() - prompt.prefix_bytes..].starts_with("let a"));
    assert!(suffix[..prompt.suffix_bytes].ends_with('\n'));
    assert!(estimate_tokens(&prompt.text) <= 200, "{}", estimate_tokens(&prompt.text));
}

#[test]
fn snippets_that_do_not_fit_are_skipped_but_smaller_later_ones_are_kept() {
    let big = snippet("big.rs", &"x".repeat(4_000));
    let small = snippet("small.rs", "fn small() {}\n");
    let input = FimInput { repo: "r", path: "a.rs", prefix: "fn main() {\n", suffix: "}\n", snippets: &[big, small] };
    let prompt = fim(Family::QwenCoder, &input, 300);
    assert_eq!(prompt.snippets_used, vec![1]);
    assert!(prompt.text.contains("small.rs") && !prompt.text.contains("big.rs"));
}

#[test]
fn cutting_never_splits_a_character() {
    let text = "é".repeat(1_000);
    for tokens in 0..50 {
        let _ = tail_lines(&text, tokens);
        let _ = head_lines(&text, tokens);
    }
    assert!(tail_lines(&text, 10).chars().all(|c| c == 'é'));
}

#[test]
fn ask_prompt_numbers_sources_and_stops_at_the_budget() {
    let sources = vec![("src/a.rs:1-3".to_owned(), "fn a() {}"), ("src/b.rs:4-9".to_owned(), "fn b() {}")];
    let (prompt, n) = ask(Family::QwenCoder, "what does a do?", &sources, 1_000);
    assert_eq!(n, 2);
    expect![[r#"
        <|im_start|>system
        You answer questions about a code repository using only the numbered sources given. Cite the sources you use as [1], [2]. If the sources do not answer the question, say so.<|im_end|>
        <|im_start|>user
        Sources:

        [1] src/a.rs:1-3
        ```
        fn a() {}
        ```

        [2] src/b.rs:4-9
        ```
        fn b() {}
        ```

        Question: what does a do?<|im_end|>
        <|im_start|>assistant
    "#]]
    .assert_eq(&prompt);
    let (_, n) = ask(Family::QwenCoder, "q", &sources, 140);
    assert_eq!(n, 1);
}

#[test]
fn a_huge_question_leaves_room_for_the_sources() {
    // A 1 MB paste (issue 13): before, it filled the prompt and the answer cited nothing.
    let question: String = "why does this line fail? let x = compute(a, b);\n".repeat(21_000);
    assert!(question.len() > 1_000_000);
    let sources = vec![("src/a.rs:1-3".to_owned(), "fn compute(a: u8, b: u8) -> u8 { a + b }")];
    let (prompt, n) = ask(Family::QwenCoder, &question, &sources, 2_048);
    assert_eq!(n, 1, "the source fits");
    assert!(estimate_tokens(&prompt) <= 2_048, "{} tokens", estimate_tokens(&prompt));
    assert!(estimate_tokens(ask_question(&question, 2_048)) <= 512);
    assert!(prompt.contains("Question: why does this line fail?"), "the question's start is kept");
}

#[test]
fn the_prefix_cut_stays_put_while_typing() {
    let mut text: String = (0..400).map(|i| format!("let value_{i} = compute({i});\n")).collect();
    let first = anchored_tail(&text, 300);
    let first_start = text.len() - first.len();
    assert!(first_start > 0 && text[..first_start].matches('\n').count().is_multiple_of(16));
    // Twenty typed lines move an unanchored cut about a dozen times; anchored, once at most.
    let mut starts = std::collections::BTreeSet::from([first_start]);
    for i in 0..20 {
        text.push_str(&format!("let typed_{i} = 1;\n"));
        let tail = anchored_tail(&text, 300);
        starts.insert(text.len() - tail.len());
        assert!(estimate_tokens(tail) <= 300);
    }
    assert!(starts.len() <= 2, "the start moved {} times", starts.len() - 1);
    // Short text is kept whole.
    assert_eq!(anchored_tail("fn main() {}\n", 300), "fn main() {}\n");
}

#[test]
fn the_partial_word_at_the_cursor_is_what_healing_takes_back() {
    let cases = [
        ("    if sink.is_ca", "    if sink."),
        ("let x = 10", "let x = "),
        ("fn main() {\n    ", "fn main() {\n    "),
        ("value.", "value."),
        // ASCII word characters only: the cut stays on a character boundary.
        ("naïve_na", "naï"),
        ("", ""),
    ];
    for (prefix, kept) in cases {
        assert_eq!(&prefix[..partial_word_start(prefix)], kept, "{prefix:?}");
    }
    // A run too long to be a word being typed (a hash, a blob) is left alone.
    let long = format!("let id = {}", "a".repeat(40));
    assert_eq!(partial_word_start(&long), long.len());
}

#[test]
fn suffix_first_layout_puts_the_suffix_before_the_prefix() {
    let snippets = [snippet("src/item.rs", "pub struct Item { cents: u64 }\n")];
    let input = FimInput { repo: "shop", path: "src/cart.rs", prefix: "fn total() -> u64 {\n    ", suffix: "\n}\n", snippets: &snippets };
    let prompt = fim_stable(Family::QwenCoder, Layout::Spm, &input, Budget::split(1_000));
    expect![[r#"
        <|repo_name|>shop
        <|file_sep|>src/item.rs
        pub struct Item { cents: u64 }
        <|file_sep|>src/cart.rs
        <|fim_suffix|>
        }
        <|fim_prefix|>fn total() -> u64 {
            <|fim_middle|>"#]]
    .assert_eq(&prompt.text);
    // Families without a suffix-first form keep their own order.
    let deepseek = fim_stable(Family::DeepseekCoder, Layout::Spm, &input, Budget::split(1_000));
    assert!(deepseek.text.find("fn total").unwrap() < deepseek.text.find("\n}\n").unwrap(), "{}", deepseek.text);
}

#[test]
fn a_stable_prompt_keeps_every_ring_snippet_in_order_whatever_the_prefix() {
    let snippets = [snippet("src/a.rs", "fn a() {}\n"), snippet("src/b.rs", "fn b() {}\n")];
    let budget = Budget::split(400);
    assert_eq!(budget.prefix + budget.suffix + budget.context + 24, 400);
    let mut text = String::new();
    let mut starts = std::collections::BTreeSet::new();
    for i in 0..60 {
        text.push_str(&format!("let typed_{i} = compute({i});\n"));
        let input = FimInput { repo: "r", path: "src/c.rs", prefix: &text, suffix: "}\n", snippets: &snippets };
        let prompt = fim_stable(Family::QwenCoder, Layout::Spm, &input, budget);
        assert_eq!(prompt.snippets_used, [0, 1]);
        let ring_end = prompt.text.find("<|file_sep|>src/c.rs").unwrap();
        starts.insert(prompt.text[..ring_end].to_owned());
        assert!(prompt.text.find("src/a.rs").unwrap() < prompt.text.find("src/b.rs").unwrap());
    }
    assert_eq!(starts.len(), 1, "the context part never changes while typing");
}

#[test]
fn a_first_request_budget_shares_its_tokens_and_never_exceeds_the_full_one() {
    let full = Budget::split(1_536);
    for first in [64, 256, 512, 1_024, 4_096] {
        let short = full.first_request(first);
        assert!(short.prefix <= full.prefix && short.suffix <= full.suffix, "{first}: {short:?}");
        assert_eq!(short.context, full.context, "the ring keeps its budget");
        // What a first request computes at most: its prefix, suffix, markers and new context.
        let computed = short.prefix + short.suffix + first_context(first) + 24;
        assert!(computed <= first, "{first}: {computed}");
        // Up to 512 only rounding is lost; above, the prefix and suffix are capped by the full budget.
        assert!(computed + 2 >= first.min(512), "{first}: {computed}");
    }
    let default = full.first_request(512);
    assert_eq!((default.prefix, default.suffix, first_context(512)), (192, 48, 248));
}

#[test]
fn the_context_gets_the_room_a_short_prefix_leaves_and_never_less_than_its_share() {
    let budget = Budget::split(1_536);
    let short = "fn main() {\n    let x = 1;\n";
    let room = budget.context_at(1_536, short, "}\n");
    assert!(room > budget.context + 600, "{room} vs {}", budget.context);
    let long: String = (0..400).map(|i| format!("let value_{i} = compute({i});\n")).collect();
    let room = budget.context_at(1_536, &long, &long);
    // A full prefix and suffix leave the fixed share, and what the prefix window's 16-line anchor
    // gives back (at most 15 lines of about 9 tokens).
    assert!(room >= budget.context && room <= budget.context + 15 * 9, "{room} vs {}", budget.context);
}
