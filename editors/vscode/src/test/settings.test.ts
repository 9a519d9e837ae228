// Unit tests of the extension's pure logic.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { AskResult, Get, dropsKeys, languageEnabled, renderAnswer, sharedText, statusText, toServerSettings, trainArgs } from '../settings';

const from = (values: Record<string, unknown>): Get => <T>(key: string, fallback: T) => (key in values ? (values[key] as T) : fallback);

test('defaults map to the bundled model and the server defaults', () => {
  assert.deepEqual(toServerSettings(from({})), {
    generation: {},
    completion: { enabled: true, prompt_tokens: 1536, debounce_ms: 75, retrieval: true },
  });
});

test('llama settings carry the model, the adapter and threads', () => {
  const s = toServerSettings(from({ 'generation.backend': 'llama', 'generation.model': '/m/q.gguf', 'generation.adapter': '/a.gguf', 'generation.threads': 2, 'completion.debounceMs': 0 }));
  assert.deepEqual(s.generation, { backend: 'llama', model: '/m/q.gguf', adapter: '/a.gguf', threads: 2 });
  assert.equal(s.completion.debounce_ms, 0);
  // MLX takes the model and the adapter; threads are llama's.
  const mlx = toServerSettings(from({ 'generation.backend': 'mlx', 'generation.model': 'smollm2-135m', 'generation.threads': 2 }));
  assert.deepEqual(mlx.generation, { backend: 'mlx', model: 'smollm2-135m' });
});

test('with no backend chosen here, none is sent: the one of kenning.toml (say, mlx with its adapter) holds', () => {
  assert.deepEqual(toServerSettings(from({ 'generation.model': 'smollm2-135m' })).generation, { model: 'smollm2-135m' });
  // llama's own settings choose llama, which another backend below would refuse them for.
  assert.deepEqual(toServerSettings(from({ 'generation.backend': '', 'generation.threads': 2 })).generation, { backend: 'llama', threads: 2 });
  assert.deepEqual(toServerSettings(from({ 'generation.adapter': '/a.gguf' })).generation, { backend: 'llama', adapter: '/a.gguf' });
});

test('a change that leaves out a setting the server started with restarts it; others are sent', () => {
  const ollama = toServerSettings(from({ 'generation.backend': 'ollama', 'generation.model': 'm' }));
  const cleared = toServerSettings(from({}));
  // The backend cleared to fall back on kenning.toml's: layered over the startup's, it would stay.
  assert.equal(dropsKeys(ollama, cleared), true);
  assert.equal(dropsKeys(toServerSettings(from({ 'index.shared': 's3://b/k' })), cleared), true, 'a shared index cleared');
  assert.equal(dropsKeys(toServerSettings(from({ 'generation.adapter': '/a.gguf' })), cleared), true, 'an adapter cleared (it chose llama)');
  // Values changed, or keys added: sent as they are.
  assert.equal(dropsKeys(cleared, ollama), false);
  assert.equal(dropsKeys(cleared, toServerSettings(from({ 'completion.debounceMs': 0 }))), false);
  assert.equal(dropsKeys(ollama, toServerSettings(from({ 'generation.backend': 'ollama', 'generation.model': 'n' }))), false);
  assert.equal(dropsKeys(undefined, cleared), false, 'before the first start');
});

test('http backends carry url and model, never llama-only keys', () => {
  const s = toServerSettings(from({ 'generation.backend': 'ollama', 'generation.model': 'qwen2.5-coder:1.5b', 'generation.url': 'http://h:11434', 'generation.threads': 4 }));
  assert.deepEqual(s.generation, { backend: 'ollama', model: 'qwen2.5-coder:1.5b', url: 'http://h:11434' });
  assert.deepEqual(toServerSettings(from({ 'generation.backend': 'none', 'generation.model': 'x' })).generation, { backend: 'none' });
});

test('training is told what this editor completes with', () => {
  assert.deepEqual(trainArgs(toServerSettings(from({})), '/w'), ['train', '/w'], 'nothing chosen here: kenning.toml decides');
  const args = trainArgs(toServerSettings(from({ 'generation.backend': 'llama', 'generation.model': 'smollm2-135m', 'generation.threads': 2 })), '/w');
  assert.deepEqual(args, ['train', '/w', '--set', 'generation.backend="llama"', '--set', 'generation.model="smollm2-135m"', '--set', 'generation.threads=2']);
  // A path is a TOML string as it is a JSON one (quotes and backslashes escaped).
  const windows = trainArgs(toServerSettings(from({ 'generation.model': 'C:\\m\\"q".gguf' })), 'C:\\w');
  assert.equal(windows[3], 'generation.model="C:\\\\m\\\\\\"q\\".gguf"');
});

test('questions may have a model and backend of their own', () => {
  assert.deepEqual(toServerSettings(from({ 'ask.model': 'qwen2.5-coder-1.5b-instruct' })).ask, { generation: { backend: 'llama', model: 'qwen2.5-coder-1.5b-instruct' } });
  const s = toServerSettings(from({ 'ask.backend': 'ollama', 'ask.model': 'qwen2.5-coder:7b-instruct', 'ask.url': 'http://h:11434' }));
  assert.deepEqual(s.ask, { generation: { backend: 'ollama', model: 'qwen2.5-coder:7b-instruct', url: 'http://h:11434' } });
  assert.equal(toServerSettings(from({ 'ask.backend': 'ollama' })).ask, undefined, 'no model: the completion model answers');
  assert.equal(toServerSettings(from({ 'ask.backend': 'openai', 'ask.model': 'm' })).ask, undefined, 'openai without a url is left out');
});

test('a shared index is sent only when set, and its state is shown', () => {
  assert.equal(toServerSettings(from({})).index, undefined);
  assert.deepEqual(toServerSettings(from({ 'index.shared': 's3://b/p' })).index, { shared: 's3://b/p' });
  const root = { indexing: false, embedded: true, index: null };
  assert.equal(sharedText(root), null);
  assert.equal(sharedText({ ...root, shared: { uri: 's3://b/p', published: '2026-12-05 03:23 UTC', offline: null } }), 'shared index s3://b/p: published 2026-12-05 03:23 UTC');
  assert.match(sharedText({ ...root, shared: { uri: 's3://b/p', published: 'x', offline: 'the store cannot be reached' } }) ?? '', /OFFLINE.*cannot be reached/);
  assert.match(sharedText({ ...root, shared: { error: 'access denied' } }) ?? '', /not used: access denied/);
});

test('languages filter', () => {
  assert.ok(languageEnabled([], 'rust'));
  assert.ok(languageEnabled(['rust', 'go'], 'go'));
  assert.ok(!languageEnabled(['rust'], 'python'));
});

test('answers render citations as links to the cited lines', () => {
  const result: AskResult = {
    question: 'Which function applies the discount?\n```rust\nfn x() {}\n```',
    answer: 'It is `apply_discount` [1], called by checkout [2] and [9].',
    extractive: false,
    model: 'qwen.gguf',
    sources: [
      { number: 1, path: 'src/pricing.rs', startLine: 3, endLine: 6, symbol: 'fn apply_discount', cited: true, uri: 'file:///w/src/pricing.rs' },
      { number: 2, path: 'src/checkout.rs', startLine: 10, endLine: 20, symbol: '', cited: true, uri: null },
    ],
  };
  const md = renderAnswer(result);
  assert.ok(md.startsWith('# Which function applies the discount?\n'), md);
  assert.ok(md.includes('[\\[1\\]](file:///w/src/pricing.rs#L3)'), md);
  assert.ok(md.includes('checkout [2] and [9]'), 'no link without a uri, or for an unknown number');
  assert.ok(md.includes('1. [src/pricing.rs:3-6](file:///w/src/pricing.rs#L3) — `fn apply_discount`'), md);
  assert.ok(md.includes('2. src/checkout.rs:10-20'), md);
  assert.ok(md.endsWith('_Answered by qwen.gguf._'), md);
});

test('status text', () => {
  assert.equal(
    statusText({ roots: [{ indexing: false, embedded: true, index: { chunks: 5042, files: 579 } }], model: { loaded: 'qwen2.5-coder-0.5b-instruct-q4_k_m.gguf' } }),
    '$(database) kenning: 5,042 chunks · qwen2.5-coder-0.5b-instruct-q4_k_m',
  );
  assert.equal(statusText({ roots: [{ indexing: true, embedded: false, index: null }], model: null }), '$(sync~spin) kenning: indexing (0 chunks)');
  assert.equal(
    statusText({ roots: [{ indexing: false, embedded: true, index: { chunks: 7, files: 1 } }], model: { loading: 'qwen2.5-coder-1.5b-base' } }),
    '$(database) kenning: 7 chunks · loading qwen2.5-coder-1.5b-base',
  );
  assert.equal(
    statusText({ roots: [{ indexing: false, embedded: false, index: null, error: 'cannot open the index' }], model: null }),
    '$(error) kenning: indexing failed · model on first use',
  );
});
