// kenning for VS Code: starts `kenning serve`, lets vscode-languageclient register inline
// completions (ghost text), and adds the commands: Ask the Codebase, Explain Selection, Re-index
// Workspace, Train on this Repository, Show Status. A status-bar item shows indexing and the model.

import { spawn, spawnSync } from 'node:child_process';
import * as vscode from 'vscode';
import { DidChangeConfigurationNotification, ExecuteCommandRequest, LanguageClient, LanguageClientOptions, ServerOptions } from 'vscode-languageclient/node';

import { AskResult, ServerSettings, Status, dropsKeys, languageEnabled, renderAnswer, sharedText, statusText, toServerSettings, trainArgs } from './settings';

let client: LanguageClient | undefined;
/** The settings the running server was started with (its `initializationOptions`). */
let started: ServerSettings | undefined;
let statusItem: vscode.StatusBarItem | undefined;
let statusTimer: NodeJS.Timeout | undefined;

function settings() {
  const config = vscode.workspace.getConfiguration('kenning');
  return toServerSettings(<T>(key: string, fallback: T) => config.get<T>(key, fallback));
}

/** The binary, or an error message saying how to get it. */
function findBinary(): { path: string } | { error: string } {
  const path = vscode.workspace.getConfiguration('kenning').get<string>('path', 'kenning') || 'kenning';
  const probe = spawnSync(path, ['--version'], { encoding: 'utf8' });
  if (probe.error || probe.status !== 0) {
    return {
      error: `kenning was not found at "${path}". Install it (scripts/quickstart, or cargo install --path server) or set kenning.path.`,
    };
  }
  return { path };
}

async function ask(question: string, uri?: vscode.Uri): Promise<void> {
  if (!client) {
    void vscode.window.showErrorMessage('kenning is not running.');
    return;
  }
  const c = client;
  const result = await vscode.window.withProgress(
    { location: vscode.ProgressLocation.Notification, title: 'kenning: asking the codebase…' },
    () =>
      c.sendRequest(ExecuteCommandRequest.type, {
        command: 'kenning.ask',
        arguments: [{ question, uri: uri?.toString() }],
      }) as Promise<AskResult>,
  );
  const doc = await vscode.workspace.openTextDocument({ content: renderAnswer(result), language: 'markdown' });
  await vscode.commands.executeCommand('markdown.showPreview', doc.uri);
}

async function refreshStatus(): Promise<void> {
  if (!client || !statusItem) return;
  try {
    const status = (await client.sendRequest(ExecuteCommandRequest.type, { command: 'kenning.status', arguments: [] })) as Status;
    statusItem.text = statusText(status);
    statusItem.tooltip = status.roots
      .flatMap((r) => [
        r.error ? `indexing failed: ${r.error}` : `${r.indexing ? 'indexing' : 'indexed'}: ${r.index?.files ?? 0} files, ${r.index?.chunks ?? 0} chunks`,
        ...(sharedText(r) ? [sharedText(r) as string] : []),
      ])
      .join('\n');
    const indexing = status.roots.some((r) => r.indexing);
    scheduleStatus(indexing ? 2_000 : 30_000);
  } catch {
    scheduleStatus(10_000);
  }
}

function scheduleStatus(ms: number): void {
  if (statusTimer) clearTimeout(statusTimer);
  statusTimer = setTimeout(() => void refreshStatus(), ms);
}

function train(binary: string): void {
  const folder = vscode.workspace.workspaceFolders?.[0];
  if (!folder) {
    void vscode.window.showErrorMessage('kenning: open a folder to train on.');
    return;
  }
  void vscode.window.withProgress(
    { location: vscode.ProgressLocation.Notification, title: 'kenning: training on this repository', cancellable: true },
    (progress, token) =>
      new Promise<void>((resolve) => {
        // A process group of its own, told as a terminal's Ctrl-C tells it: kenning train and its
        // trainer both stop, the trainer after saving (the same command carries on). A SIGTERM to
        // kenning alone would leave the trainer running on.
        const group = process.platform !== 'win32';
        const child = spawn(binary, trainArgs(settings(), folder.uri.fsPath), { cwd: folder.uri.fsPath, detached: group });
        token.onCancellationRequested(() => {
          if (group && child.pid) {
            try {
              process.kill(-child.pid, 'SIGINT');
              return;
            } catch {
              // The group is gone already.
            }
          }
          child.kill();
        });
        let last = '';
        const onData = (data: Buffer) => {
          last = data.toString().trim().split('\n').pop() ?? last;
          progress.report({ message: last });
        };
        child.stdout.on('data', onData);
        child.stderr.on('data', onData);
        child.on('error', (e) => {
          void vscode.window.showErrorMessage(`kenning train: ${e.message}`);
          resolve();
        });
        child.on('close', (code) => {
          if (code === 0) void vscode.window.showInformationMessage(`kenning: training finished. ${last}`);
          else if (!token.isCancellationRequested) void vscode.window.showErrorMessage(`kenning train failed: ${last}`);
          resolve();
        });
      }),
  );
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  const found = findBinary();
  if ('error' in found) {
    const choice = await vscode.window.showErrorMessage(found.error, 'Open Settings');
    if (choice) void vscode.commands.executeCommand('workbench.action.openSettings', 'kenning.path');
    return;
  }
  const serverOptions: ServerOptions = { command: found.path, args: ['serve'] };
  const languages = vscode.workspace.getConfiguration('kenning').get<string[]>('languages', []);
  const clientOptions: LanguageClientOptions = {
    documentSelector: languages.length > 0 ? languages.map((language) => ({ scheme: 'file', language })) : [{ scheme: 'file' }],
    // Read again at every (re)start; kept, since a change that leaves out one of them restarts.
    initializationOptions: () => (started = settings()),
    middleware: {
      provideInlineCompletionItems: (document, position, ctx, token, next) =>
        languageEnabled(vscode.workspace.getConfiguration('kenning').get<string[]>('languages', []), document.languageId)
          ? next(document, position, ctx, token)
          : undefined,
    },
  };
  client = new LanguageClient('kenning', 'kenning', serverOptions, clientOptions);
  await client.start();

  statusItem = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  statusItem.command = 'kenning.showStatus';
  statusItem.text = '$(sync~spin) kenning';
  statusItem.show();
  scheduleStatus(1_000);

  context.subscriptions.push(
    statusItem,
    vscode.workspace.onDidChangeConfiguration((e) => {
      if (e.affectsConfiguration('kenning') && client) {
        const now = settings();
        if (dropsKeys(started, now)) void client.restart();
        else void client.sendNotification(DidChangeConfigurationNotification.type, { settings: now });
      }
    }),
    vscode.commands.registerCommand('kenning.askCodebase', async () => {
      const question = await vscode.window.showInputBox({ prompt: 'Ask the codebase', placeHolder: 'Where are retries configured?' });
      if (question) await ask(question, vscode.window.activeTextEditor?.document.uri);
    }),
    vscode.commands.registerCommand('kenning.explainSelection', async () => {
      const editor = vscode.window.activeTextEditor;
      if (!editor || editor.selection.isEmpty) {
        void vscode.window.showInformationMessage('kenning: select some code first.');
        return;
      }
      const code = editor.document.getText(editor.selection);
      await ask(`Explain what this code does:\n\`\`\`${editor.document.languageId}\n${code}\n\`\`\``, editor.document.uri);
    }),
    vscode.commands.registerCommand('kenning.reindexWorkspace', async () => {
      await client?.sendRequest(ExecuteCommandRequest.type, { command: 'kenning.reindex', arguments: [] });
      scheduleStatus(500);
    }),
    vscode.commands.registerCommand('kenning.trainOnRepository', () => train(found.path)),
    vscode.commands.registerCommand('kenning.showStatus', async () => {
      const status = await client?.sendRequest(ExecuteCommandRequest.type, { command: 'kenning.status', arguments: [] });
      const doc = await vscode.workspace.openTextDocument({ content: JSON.stringify(status, null, 2), language: 'json' });
      await vscode.window.showTextDocument(doc, { preview: true });
    }),
  );
}

export async function deactivate(): Promise<void> {
  if (statusTimer) clearTimeout(statusTimer);
  await client?.stop();
}
