//! kenning in a real editor: headless Neovim 0.12 (installed by `scripts/setup`) with the plugin
//! from `editors/neovim`, driven over its RPC socket the way a user types: enter insert mode on an
//! empty line, see kenning's ghost text, press <Tab>, find the text in the buffer.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{test_cache, write};

fn nvim() -> PathBuf {
    if let Some(path) = std::env::var_os("KENNING_NVIM") {
        return PathBuf::from(path);
    }
    let path = kenning::paths::Paths::from_env().cache().join("tools/neovim/bin/nvim");
    assert!(path.is_file(), "Neovim is missing at {}: run scripts/setup (or set KENNING_NVIM)", path.display());
    path
}

/// Kills Neovim (and with it the server) when the test ends, passing or not.
struct Editor {
    child: Child,
    socket: PathBuf,
}

impl Drop for Editor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Editor {
    /// Evaluates a Lua expression in the editor; its value as a string.
    fn lua(&self, expr: &str) -> String {
        let out = Command::new(nvim())
            .arg("--server")
            .arg(&self.socket)
            .arg("--remote-expr")
            .arg(format!("luaeval(\"{}\")", expr.replace('"', "\\\"")))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        let status = Command::new(nvim()).arg("--server").arg(&self.socket).arg("--remote-send").arg(keys).status().unwrap();
        assert!(status.success());
    }

    fn wait_for(&self, what: &str, timeout: Duration, expr: &str, done: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let value = self.lua(expr);
            if done(&value) {
                return value;
            }
            if start.elapsed() > timeout {
                let log = self.lua("_G.kenning_test_log()");
                panic!("timed out waiting for {what}; last value {value:?}; messages: {log}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn ghost_text_appears_and_tab_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("shop");
    write(
        &root,
        "src/pricing.rs",
        "//! Prices and discounts.\n\n/// Applies a percentage discount to a total in cents.\npub fn apply_loyalty_discount_cents(total_cents: u64, percent: u8) -> u64 {\n    total_cents - total_cents * u64::from(percent.min(100)) / 100\n}\n",
    );
    write(&root, "src/cart.rs", "//! The cart.\n\n/// Sum of the prices, in cents.\npub fn total_cents(prices: &[u64]) -> u64 {\n    prices.iter().sum()\n}\n");
    write(
        &root,
        "src/checkout.rs",
        "use crate::cart::total_cents;\n\n/// What a customer pays after the loyalty discount, in cents.\npub fn checkout(prices: &[u64], percent: u8) -> u64 {\n    let total = total_cents(prices);\n\n}\n",
    );
    std::fs::create_dir_all(root.join(".git")).unwrap();
    let root = root.canonicalize().unwrap();
    let cache = test_cache(&dir.path().join("cache"));
    let plugin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../editors/neovim").canonicalize().unwrap();
    let init = dir.path().join("init.lua");
    std::fs::write(
        &init,
        format!(
            r#"
vim.opt.runtimepath:prepend({plugin:?})
vim.o.swapfile = false
local messages = {{}}
_G.kenning_progress = {{}}
vim.api.nvim_create_autocmd('LspProgress', {{ callback = function(ev)
  table.insert(_G.kenning_progress, (ev.data.params.value or {{}}).kind or '?')
end }})
vim.lsp.handlers['window/showMessage'] = function(_, m) table.insert(messages, m.message) end
function _G.kenning_test_log() return table.concat(messages, ' | ') end
require('kenning').setup({{
  cmd = {{ {bin:?}, '--cache-dir', {cache:?}, 'serve' }},
  settings = {{
    completion = {{ debounce_ms = 0, prompt_tokens = 700, max_tokens = 24 }},
    ask = {{ max_tokens = 48, sources = 3 }},
    generation = {{ backend = 'llama', threads = 1, context = 2048 }},
  }},
}})
function _G.kenning_test_ready()
  local c = vim.lsp.get_clients({{ name = 'kenning' }})[1]
  if not c then return 'no client' end
  local r = c:request_sync('workspace/executeCommand', {{ command = 'kenning.status', arguments = {{}} }}, 5000)
  if not r or not r.result then return 'no status' end
  local root = r.result.roots[1]
  if root and root.indexing == false and root.embedded and root.index ~= vim.NIL and root.index.chunks > 0 then return 'ready' end
  return 'indexing'
end
function _G.kenning_test_ghost()
  local ns = vim.api.nvim_get_namespaces()['nvim.lsp.inline_completion']
  if not ns then return '' end
  local out = {{}}
  for _, m in ipairs(vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, {{ details = true }})) do
    for _, chunk in ipairs(m[4].virt_text or {{}}) do table.insert(out, chunk[1]) end
    for _, line in ipairs(m[4].virt_lines or {{}}) do
      for _, chunk in ipairs(line) do table.insert(out, chunk[1]) end
    end
  end
  return table.concat(out, '\n')
end
"#,
            plugin = plugin.display().to_string(),
            bin = env!("CARGO_BIN_EXE_kenning"),
            cache = cache.cache().display().to_string(),
        ),
    )
    .unwrap();

    let socket = dir.path().join("nvim.sock");
    let child = Command::new(nvim())
        .args(["--headless", "-n", "-i", "NONE", "-u"])
        .arg(&init)
        .arg("--listen")
        .arg(&socket)
        .arg(root.join("src/checkout.rs"))
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let editor = Editor { child, socket: socket.clone() };
    let start = Instant::now();
    while !socket.exists() {
        assert!(start.elapsed() < Duration::from_secs(30), "Neovim did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    editor.wait_for("the index", Duration::from_secs(300), "_G.kenning_test_ready()", |v| v.trim() == "ready");
    // Line 6 is the empty line of the body: `S` starts insert mode there, autoindented.
    editor.keys("6GS");
    let ghost = editor.wait_for("ghost text", Duration::from_secs(180), "_G.kenning_test_ghost()", |v| !v.trim().is_empty());
    eprintln!("ghost text: {ghost:?}");
    assert!(ghost.contains("apply_loyalty_discount_cents"), "ghost text: {ghost:?}");

    editor.keys("<Tab>");
    let line = editor.wait_for("the accepted text", Duration::from_secs(30), "vim.api.nvim_buf_get_lines(0, 5, 6, false)[1]", |v| {
        v.contains("apply_loyalty_discount_cents")
    });
    eprintln!("accepted: {line:?}");
    assert!(line.starts_with("    ") && !line.starts_with("     "), "kept the indentation: {line:?}");
    assert_eq!(editor.lua("_G.kenning_test_ghost()").trim(), "", "the ghost text is gone once accepted");

    // Indexing progress reached the editor as LspProgress events, begin to end.
    let kinds = editor.lua("table.concat(_G.kenning_progress, ',')");
    assert!(kinds.starts_with("begin") && kinds.contains("end"), "progress kinds: {kinds:?}");

    // :KenningAsk puts the citations in the quickfix list, the definition first.
    editor.keys("<Esc>:KenningAsk Which function applies the loyalty discount?<CR>");
    let first = editor.wait_for("the quickfix list", Duration::from_secs(180), "vim.json.encode(vim.fn.getqflist()[1] or {})", |v| v.contains("lnum"));
    let item: serde_json::Value = serde_json::from_str(first.trim()).unwrap();
    let file = editor.lua(&format!("vim.fn.bufname({})", item["bufnr"]));
    assert!(file.trim().ends_with("src/pricing.rs"), "{file:?} {item}");
    let (lnum, end) = (item["lnum"].as_u64().unwrap(), item["end_lnum"].as_u64().unwrap());
    assert!(lnum <= 4 && 4 <= end, "the definition (line 4) is inside {lnum}-{end}");
    assert!(editor.lua("vim.api.nvim_win_get_config(0).relative").trim() == "editor", "the answer is in a float");
    editor.keys("q");

    // :checkhealth kenning finds the binary, the models, the server and its index.
    editor.keys(":checkhealth kenning<CR>");
    let report = editor.wait_for("the health report", Duration::from_secs(60), "table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, false), ' | ')", |v| {
        v.contains("chunks")
    });
    assert!(!report.contains("ERROR"), "{report}");
    assert!(report.contains("OK binary:") && report.contains("all pinned assets in place"), "{report}");
    // The completions above loaded the model: the server names it.
    assert!(report.contains("OK model: qwen2.5-coder-0.5b"), "{report}");

    // Global flags after `serve` go along too: `serve` is left out wherever it is.
    let line = editor.lua(
        "(function() local k = require('kenning'); local cmd = k.options.cmd; k.options.cmd = {'kenning', 'serve', '--cache-dir', '/c'}; \
         local line = table.concat(k.train_cmd('/r', {'--iters', '1'}), ' '); k.options.cmd = cmd; return line end)()",
    );
    assert!(line.starts_with("kenning --cache-dir /c train /r ") && line.trim_end().ends_with(" --iters 1") && !line.contains("serve"), "{line}");

    // :KenningTrain runs `kenning train` in a terminal split with the binary, flags and generation
    // settings the editor was set up with: with its model switched to SmolLM2 here (the server
    // completes with Qwen, as kenning.toml would), that is the model it says it fine-tunes.
    editor.lua("(function() require('kenning').options.settings.generation.model = 'smollm2-135m'; vim.cmd('KenningTrain --register never'); return '' end)()");
    // A terminal buffer breaks a line at the window's width: read them joined back.
    let terminal = editor.wait_for("kenning train's first line", Duration::from_secs(60), "table.concat(vim.api.nvim_buf_get_lines(0, 0, -1, false), '')", |v| {
        v.contains("fine-tuning")
    });
    assert!(terminal.contains("fine-tuning smollm2-135m: the model the workspace completes with"), "{terminal}");
    assert_eq!(editor.lua("vim.bo.buftype").trim(), "terminal", "{terminal}");
    // It works in the test's cache: `--cache-dir` went along.
    let work = cache.training_for(&root);
    let start = Instant::now();
    while !work.is_dir() {
        assert!(start.elapsed() < Duration::from_secs(60), "kenning train did not work in {}: {terminal}", work.display());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Closing the split stops the run.
    editor.keys("<C-\\><C-n>:bwipe!<CR>");
}
