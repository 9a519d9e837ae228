//! Languages kenning parses with tree-sitter, and what their definitions look like.
//!
//! Each language says which node kinds are definitions worth naming in a symbol path
//! (`impl Parser > fn parse_expr`), with the label shown before the name, and which node kinds are
//! comments or attributes that belong to the definition that follows them.

use std::path::Path;

/// A language kenning knows. `Text` is every other text file (chunked by lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Language {
    Rust,
    Python,
    JavaScript,
    TypeScript,
    Tsx,
    Go,
    Java,
    C,
    Cpp,
    Text,
}

impl Language {
    pub const ALL: [Language; 10] = [
        Language::Rust,
        Language::Python,
        Language::JavaScript,
        Language::TypeScript,
        Language::Tsx,
        Language::Go,
        Language::Java,
        Language::C,
        Language::Cpp,
        Language::Text,
    ];

    /// Detects the language from a path's extension.
    pub fn from_path(path: &str) -> Language {
        let ext = Path::new(path).extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        match ext.as_str() {
            "rs" => Language::Rust,
            "py" | "pyi" => Language::Python,
            "js" | "mjs" | "cjs" | "jsx" => Language::JavaScript,
            "ts" | "mts" | "cts" => Language::TypeScript,
            "tsx" => Language::Tsx,
            "go" => Language::Go,
            "java" => Language::Java,
            "c" | "h" => Language::C,
            "cc" | "cpp" | "cxx" | "c++" | "hh" | "hpp" | "hxx" | "h++" | "ipp" => Language::Cpp,
            _ => Language::Text,
        }
    }

    /// The stable name stored in the index and accepted by `--lang`.
    pub fn name(self) -> &'static str {
        match self {
            Language::Rust => "rust",
            Language::Python => "python",
            Language::JavaScript => "javascript",
            Language::TypeScript => "typescript",
            Language::Tsx => "tsx",
            Language::Go => "go",
            Language::Java => "java",
            Language::C => "c",
            Language::Cpp => "cpp",
            Language::Text => "text",
        }
    }

    pub fn from_name(name: &str) -> Option<Language> {
        let name = name.to_ascii_lowercase();
        let alias = match name.as_str() {
            "rs" => "rust",
            "py" => "python",
            "js" => "javascript",
            "ts" => "typescript",
            "golang" => "go",
            "c++" => "cpp",
            other => other,
        };
        Language::ALL.into_iter().find(|l| l.name() == alias)
    }

    /// The tree-sitter grammar, or `None` for plain text.
    pub fn grammar(self) -> Option<tree_sitter::Language> {
        Some(match self {
            Language::Rust => tree_sitter_rust::LANGUAGE.into(),
            Language::Python => tree_sitter_python::LANGUAGE.into(),
            Language::JavaScript => tree_sitter_javascript::LANGUAGE.into(),
            Language::TypeScript => tree_sitter_typescript::LANGUAGE_TYPESCRIPT.into(),
            Language::Tsx => tree_sitter_typescript::LANGUAGE_TSX.into(),
            Language::Go => tree_sitter_go::LANGUAGE.into(),
            Language::Java => tree_sitter_java::LANGUAGE.into(),
            Language::C => tree_sitter_c::LANGUAGE.into(),
            Language::Cpp => tree_sitter_cpp::LANGUAGE.into(),
            Language::Text => return None,
        })
    }

    /// The label of a definition node kind (`fn`, `class`, ...), or `None` if the kind is not a
    /// definition this language names in symbol paths.
    pub fn definition_label(self, kind: &str) -> Option<&'static str> {
        use Language::*;
        Some(match (self, kind) {
            (Rust, "function_item" | "function_signature_item") => "fn",
            (Rust, "impl_item") => "impl",
            (Rust, "struct_item") => "struct",
            (Rust, "enum_item") => "enum",
            (Rust, "union_item") => "union",
            (Rust, "trait_item") => "trait",
            (Rust, "mod_item") => "mod",
            (Rust, "macro_definition") => "macro_rules!",
            (Rust, "const_item") => "const",
            (Rust, "static_item") => "static",
            (Rust, "type_item") => "type",
            (Python, "function_definition") => "def",
            (Python, "class_definition") => "class",
            (JavaScript | TypeScript | Tsx, "function_declaration" | "generator_function_declaration") => "function",
            (JavaScript | TypeScript | Tsx, "class_declaration" | "abstract_class_declaration") => "class",
            (JavaScript | TypeScript | Tsx, "method_definition") => "method",
            (TypeScript | Tsx, "interface_declaration") => "interface",
            (TypeScript | Tsx, "type_alias_declaration") => "type",
            (TypeScript | Tsx, "enum_declaration") => "enum",
            (TypeScript | Tsx, "internal_module" | "module") => "namespace",
            (Go, "function_declaration") => "func",
            (Go, "method_declaration") => "func",
            (Go, "type_spec") => "type",
            (Java, "class_declaration" | "record_declaration") => "class",
            (Java, "interface_declaration") => "interface",
            (Java, "enum_declaration") => "enum",
            (Java, "method_declaration") => "method",
            (Java, "constructor_declaration") => "constructor",
            (C | Cpp, "function_definition") => "fn",
            (C | Cpp, "struct_specifier") => "struct",
            (C | Cpp, "union_specifier") => "union",
            (C | Cpp, "enum_specifier") => "enum",
            (Cpp, "class_specifier") => "class",
            (Cpp, "namespace_definition") => "namespace",
            (Cpp, "template_declaration") => return None,
            _ => return None,
        })
    }

    /// Whether a node of this kind belongs with the node after it (doc comments, attributes,
    /// decorators), so a chunk boundary never separates them.
    pub fn attaches_forward(self, kind: &str) -> bool {
        use Language::*;
        match (self, kind) {
            (_, "comment" | "line_comment" | "block_comment") => true,
            (Rust, "attribute_item") => true,
            (Rust, "inner_attribute_item") => false,
            (Python, "decorator") => true,
            (Java | TypeScript | Tsx | JavaScript, "decorator" | "marker_annotation" | "annotation") => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_and_names_round_trip() {
        assert_eq!(Language::from_path("src/a.rs"), Language::Rust);
        assert_eq!(Language::from_path("x/y.TSX"), Language::Tsx);
        assert_eq!(Language::from_path("include/a.hpp"), Language::Cpp);
        assert_eq!(Language::from_path("README.md"), Language::Text);
        assert_eq!(Language::from_path("Makefile"), Language::Text);
        for l in Language::ALL {
            assert_eq!(Language::from_name(l.name()), Some(l));
            assert_eq!(l.grammar().is_some(), l != Language::Text);
        }
        assert_eq!(Language::from_name("py"), Some(Language::Python));
        assert_eq!(Language::from_name("cobol"), None);
    }
}
