// Drives `kenning serve` with vscode-languageserver-protocol exactly as the extension configures it
// (same initializationOptions from toServerSettings, VS Code's capabilities for inline completion),
// since VS Code itself cannot run here. Needs KENNING_BIN (a built kenning) and the assets that
// scripts/setup installs; scripts/test provides both.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'node:test';
import { pathToFileURL } from 'node:url';

import {
  createProtocolConnection,
  DidOpenTextDocumentNotification,
  ExecuteCommandRequest,
  InitializedNotification,
  InitializeRequest,
  InlineCompletionRequest,
  ShowMessageNotification,
  StreamMessageReader,
  StreamMessageWriter,
} from 'vscode-languageserver-protocol/node';

import { AskResult, Get, renderAnswer, Status, toServerSettings } from '../settings';

function write(root: string, rel: string, text: string) {
  fs.mkdirSync(path.dirname(path.join(root, rel)), { recursive: true });
  fs.writeFileSync(path.join(root, rel), text);
}

test('the server completes and answers as the extension configures it', { timeout: 600_000 }, async () => {
  const bin = process.env.KENNING_BIN;
  assert.ok(bin && fs.existsSync(bin), 'set KENNING_BIN to a built kenning binary (scripts/test does)');
  const realCache = process.env.KENNING_CACHE_DIR ?? path.join(os.homedir(), '.cache', 'kenning');
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kenning-vscode-'));
  const cache = path.join(tmp, 'cache');
  fs.mkdirSync(cache);
  fs.symlinkSync(path.join(realCache, 'assets'), path.join(cache, 'assets'));
  const root = fs.realpathSync(fs.mkdtempSync(path.join(tmp, 'shop-')));
  write(root, 'src/pricing.rs', '/// Applies a percentage discount to a total in cents.\npub fn apply_loyalty_discount_cents(total_cents: u64, percent: u8) -> u64 {\n    total_cents - total_cents * u64::from(percent.min(100)) / 100\n}\n');
  write(root, 'src/cart.rs', '/// Sum of the prices, in cents.\npub fn total_cents(prices: &[u64]) -> u64 {\n    prices.iter().sum()\n}\n');
  const checkout = 'use crate::cart::total_cents;\n\n/// What a customer pays after the loyalty discount, in cents.\npub fn checkout(prices: &[u64], percent: u8) -> u64 {\n    let total = total_cents(prices);\n    \n}\n';

  const server = spawn(bin, ['--cache-dir', cache, 'serve'], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, KENNING_LOG: 'kenning=debug' } });
  // What the server said, for the failure message of any assertion below.
  let log = '';
  server.stderr.on('data', (chunk: Buffer) => {
    log = (log + chunk.toString()).slice(-20_000);
  });
  const connection = createProtocolConnection(new StreamMessageReader(server.stdout), new StreamMessageWriter(server.stdin));
  connection.onRequest('window/workDoneProgress/create', () => null);
  connection.onRequest('client/registerCapability', () => null);
  connection.onNotification(ShowMessageNotification.type, (m) => {
    log += `\n[window/showMessage] ${m.message}\n`;
  });
  connection.listen();
  try {
    // The user's settings, plus what keeps the test fast on a CPU.
    const user: Record<string, unknown> = { 'completion.debounceMs': 0, 'completion.promptTokens': 700, 'generation.threads': 1 };
    const get: Get = <T>(key: string, fallback: T) => (key in user ? (user[key] as T) : fallback);
    const rootUri = pathToFileURL(root).href;
    const init = await connection.sendRequest(InitializeRequest.type, {
      processId: process.pid,
      rootUri,
      workspaceFolders: [{ uri: rootUri, name: 'shop' }],
      initializationOptions: toServerSettings(get),
      capabilities: {
        general: { positionEncodings: ['utf-16'] },
        window: { workDoneProgress: true },
        textDocument: { inlineCompletion: { dynamicRegistration: true } },
        workspace: { didChangeWatchedFiles: { dynamicRegistration: true } },
      },
    });
    assert.equal(init.capabilities.positionEncoding, 'utf-16');
    assert.equal(init.capabilities.inlineCompletionProvider, true);
    await connection.sendNotification(InitializedNotification.type, {});

    const deadline = Date.now() + 180_000;
    for (;;) {
      const status = (await connection.sendRequest(ExecuteCommandRequest.type, { command: 'kenning.status', arguments: [] })) as Status;
      const r = status.roots[0] as Status['roots'][0] | undefined;
      if (r && !r.indexing && r.embedded && (r.index?.chunks ?? 0) > 0) break;
      assert.ok(!r?.error && Date.now() < deadline, `indexing did not finish: ${JSON.stringify(status)}\nthe server's log:\n${log}`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }

    const uri = pathToFileURL(path.join(root, 'src/checkout.rs')).href;
    await connection.sendNotification(DidOpenTextDocumentNotification.type, { textDocument: { uri, languageId: 'rust', version: 1, text: checkout } });
    const items = await connection.sendRequest(InlineCompletionRequest.type, {
      textDocument: { uri },
      position: { line: 5, character: 4 },
      context: { triggerKind: 2 },
    });
    const list = Array.isArray(items) ? items : (items?.items ?? []);
    assert.equal(list.length, 1);
    const text = typeof list[0].insertText === 'string' ? list[0].insertText : list[0].insertText.value;
    assert.ok(text.includes('apply_loyalty_discount_cents('), text);

    const answer = (await connection.sendRequest(ExecuteCommandRequest.type, {
      command: 'kenning.ask',
      arguments: [{ question: 'Which function applies the loyalty discount?', uri }],
    })) as AskResult;
    assert.equal(answer.sources[0]?.path, 'src/pricing.rs');
    const md = renderAnswer(answer);
    assert.ok(md.includes(`(${pathToFileURL(path.join(root, 'src/pricing.rs')).href}#L`), md);
  } catch (e) {
    if (e instanceof Error && !e.message.includes("the server's log")) e.message += `\nthe server's log:\n${log}`;
    throw e;
  } finally {
    connection.dispose();
    server.kill();
    server.stdin.destroy();
    server.stdout.destroy();
    server.stderr.destroy();
    // Something left this test's process alive after the test had passed and the server was gone
    // (seen in CI runs, not explained yet): it may not outlive its test by more than 5 s.
    setTimeout(() => process.exit(process.exitCode ?? 0), 5_000).unref();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});
