// The extension's pure logic (no `vscode` import, so it is unit-tested with node:test): VS Code
// settings to kenning's configuration schema, answers to Markdown, the status-bar text.

/** Reads one setting (`generation.backend`, ...) under `kenning.` with a fallback. */
export type Get = <T>(key: string, fallback: T) => T;

/** kenning's configuration (the kenning.toml schema), as sent in initializationOptions. */
export interface ServerSettings {
  generation: Record<string, unknown>;
  completion: Record<string, unknown>;
  /** Present when questions have a model of their own (`ask.generation`). */
  ask?: Record<string, unknown>;
  /** Present when the team's shared index is set here (`index.shared`; kenning.toml may set it too). */
  index?: Record<string, unknown>;
}

/**
 * Maps VS Code settings to the server's schema; empty strings mean "the server's default". With no
 * backend chosen here, none is sent: kenning.toml's holds (else llama), and so does what
 * `kenning train` registered there (on Apple Silicon `backend = "mlx"` with its adapter, which
 * another backend sent from here would replace, table and adapter together).
 */
export function toServerSettings(get: Get): ServerSettings {
  const model = get<string>('generation.model', '');
  const url = get<string>('generation.url', '');
  const adapter = get<string>('generation.adapter', '');
  const threads = get<number>('generation.threads', 0);
  // The adapter (a llama.cpp GGUF) and threads are llama's settings: set here, they choose llama
  // (as they did when llama was this setting's default), since another backend refuses them.
  const chosen = get<string>('generation.backend', '');
  const backend = chosen || (adapter || threads > 0 ? 'llama' : '');
  const generation: Record<string, unknown> = backend ? { backend } : {};
  if (backend === '' || backend === 'llama' || backend === 'mlx') {
    if (model) generation.model = model;
    if (adapter) generation.adapter = adapter;
    if (threads > 0 && backend === 'llama') generation.threads = threads;
  } else if (backend === 'ollama' || backend === 'openai') {
    generation.model = model;
    if (url) generation.url = url;
  }
  const settings: ServerSettings = {
    generation,
    completion: {
      enabled: get<boolean>('completion.enabled', true),
      prompt_tokens: get<number>('completion.promptTokens', 1536),
      debounce_ms: get<number>('completion.debounceMs', 75),
      retrieval: get<boolean>('completion.retrieval', true),
    },
  };
  // Questions answered by a model of their own: a larger instruct model, or a server.
  // An openai backend needs its url: without one the server would refuse every setting sent with it.
  const askModel = get<string>('ask.model', '');
  const askBackend = get<string>('ask.backend', 'llama');
  const askUrl = get<string>('ask.url', '');
  if (askModel && (askBackend !== 'openai' || askUrl)) {
    const ask: Record<string, unknown> = { backend: askBackend, model: askModel };
    if (askUrl && askBackend !== 'llama') ask.url = askUrl;
    settings.ask = { generation: ask };
  }
  const shared = get<string>('index.shared', '');
  if (shared) settings.index = { shared };
  return settings;
}

/**
 * `kenning train`'s arguments for a folder: the generation settings made here go along as the
 * server gets them (`--set`), so that it fine-tunes the model this editor completes with (an
 * adapter fits only its model) and measures the adapter against it.
 */
export function trainArgs(settings: ServerSettings, folder: string): string[] {
  const sets = Object.entries(settings.generation).flatMap(([key, value]) => ['--set', `generation.${key}=${JSON.stringify(value)}`]);
  return ['train', folder, ...sets];
}

/**
 * Whether `after` leaves out a setting `before` has (a key at any depth). The server layers changed
 * settings over those it started with, key by key, so such a key would keep its startup value
 * (a backend cleared to fall back on kenning.toml's would stay): only a restart, which starts the
 * server with `after`, drops it.
 */
export function dropsKeys(before: unknown, after: unknown): boolean {
  if (typeof before !== 'object' || before === null || Array.isArray(before)) return false;
  if (typeof after !== 'object' || after === null || Array.isArray(after)) return Object.keys(before).length > 0;
  const a = after as Record<string, unknown>;
  return Object.entries(before as Record<string, unknown>).some(([key, value]) => !(key in a) || dropsKeys(value, a[key]));
}

/** Whether completions are wanted in a language (an empty list means every language). */
export function languageEnabled(languages: readonly string[], languageId: string): boolean {
  return languages.length === 0 || languages.includes(languageId);
}

/** One source of an answer, as `kenning.ask` returns it. */
export interface AskSource {
  number: number;
  path: string;
  startLine: number;
  endLine: number;
  symbol: string;
  cited: boolean;
  uri: string | null;
}

export interface AskResult {
  question: string;
  answer: string;
  extractive: boolean;
  model: string | null;
  sources: AskSource[];
}

/** The answer as Markdown, each citation a link that opens the file at its first line. */
export function renderAnswer(result: AskResult): string {
  const link = (s: AskSource) => {
    const label = `${s.path}:${s.startLine}-${s.endLine}`;
    return s.uri ? `[${label}](${s.uri}#L${s.startLine})` : label;
  };
  const byNumber = new Map(result.sources.map((s) => [s.number, s]));
  // [n] in the answer becomes a link to that source.
  const answer = result.answer.replace(/\[(\d+)\]/g, (whole, n: string) => {
    const s = byNumber.get(Number(n));
    return s && s.uri ? `[\\[${n}\\]](${s.uri}#L${s.startLine})` : whole;
  });
  const lines = [`# ${result.question.split('\n')[0]}`, '', answer, ''];
  if (result.sources.length > 0) {
    lines.push('## Sources', '');
    for (const s of result.sources) {
      const symbol = s.symbol ? ` — \`${s.symbol}\`` : '';
      lines.push(`${s.number}. ${link(s)}${symbol}`);
    }
    lines.push('');
  }
  lines.push(result.extractive ? '_No model configured: the most relevant places, not a generated answer._' : `_Answered by ${result.model ?? 'a local model'}._`);
  return lines.join('\n');
}

export interface StatusRoot {
  indexing: boolean;
  embedded: boolean;
  index: { chunks: number; files: number } | null;
  /** Why the last index run failed, until one succeeds. */
  error?: string | null;
  /** The team's shared index under this folder's, when one is configured. */
  shared?: { uri?: string; published?: string; offline?: string | null; error?: string };
}

export interface Status {
  roots: StatusRoot[];
  model: { loaded?: string | null; loading?: string; error?: string } | null;
}

/** The status tooltip's line for a folder's shared index, if it has one. */
export function sharedText(root: StatusRoot): string | null {
  const s = root.shared;
  if (!s) return null;
  if (s.error) return `shared index not used: ${s.error}`;
  if (s.offline) return `shared index ${s.uri}: OFFLINE, the copy of ${s.published} serves (${s.offline})`;
  return `shared index ${s.uri}: published ${s.published}`;
}

/** The status-bar text for a `kenning.status` result. */
export function statusText(status: Status): string {
  const indexing = status.roots.some((r) => r.indexing);
  const chunks = status.roots.reduce((n, r) => n + (r.index?.chunks ?? 0), 0);
  const model = status.model?.error
    ? 'model error'
    : status.model?.loading
      ? `loading ${status.model.loading}`
      : status.model?.loaded
        ? status.model.loaded.replace(/\.gguf$/, '')
        : 'model on first use';
  if (indexing) return `$(sync~spin) kenning: indexing (${chunks.toLocaleString('en-US')} chunks)`;
  if (status.roots.some((r) => r.error)) return `$(error) kenning: indexing failed · ${model}`;
  return `$(database) kenning: ${chunks.toLocaleString('en-US')} chunks · ${model}`;
}
