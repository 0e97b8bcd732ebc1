'use strict';
// codelm for VS Code: starts `codelm lsp` and shows its inline completions as ghost text.
// Plain CommonJS, no build step. Needs vscode-languageclient 10+ (LSP 3.18): its built-in
// InlineCompletionItemFeature registers a vscode InlineCompletionItemProvider that sends
// textDocument/inlineCompletion and maps each item's insertText, range and command.
const os = require('os');
const vscode = require('vscode');
const { LanguageClient, RevealOutputChannelOn } = require('vscode-languageclient/node');

// Settings the server reads, sent as {"codelm": {...}}. The server rejects a settings object
// with a key it does not know (and applies none of it), so only these go: not the launch
// settings below. That is also why `synchronize.configurationSection: 'codelm'` is not used:
// it would send the whole section, `command`, `run` and `server` included.
const SERVER_KEYS = ['temperature', 'maxTokens', 'maxLines', 'debounceMs', 'context', 'contextSnippets', 'contextDeclarations', 'invokedN'];
// Settings that say how to start the server: changing one restarts it.
const LAUNCH_KEYS = ['command', 'run', 'server', 'model', 'languages'];

let client; // the LanguageClient, while there is one
let log; // the client's log (the "codelm" output channel), kept across restarts
let statsChannel; // where codelm.showStats writes
let queue = Promise.resolve(); // starts and stops, one after the other

const settings = () => vscode.workspace.getConfiguration('codelm');

function serverSettings() {
  const cfg = settings();
  return { codelm: Object.fromEntries(SERVER_KEYS.map((key) => [key, cfg.get(key)])) };
}

// `~` and `${workspaceFolder}` in paths: spawn expands neither.
function expand(path) {
  const root = vscode.workspace.workspaceFolders?.[0]?.uri.fsPath ?? '';
  return path.replace(/^~(?=$|[\\/])/, os.homedir()).replace(/\$\{workspaceFolder\}/g, root);
}

// `codelm lsp RUN` or `codelm lsp --server URL [--model NAME]`; undefined when neither is set.
// The API key is not a setting: `codelm lsp` reads CODELM_API_KEY from the environment that
// VS Code passes on to it.
function serverExecutable(cfg) {
  const [command, ...args] = cfg.get('command') ?? [];
  const server = cfg.get('server')?.trim();
  const run = cfg.get('run')?.trim();
  if (!command || !(server || run)) return undefined;
  if (server) args.push('--server', server, ...(cfg.get('model') ? ['--model', cfg.get('model')] : []));
  else args.push(expand(run));
  // No `transport`: the client then talks over the process's stdin/stdout. (transport:
  // TransportKind.stdio would append `--stdio`, which `codelm lsp` does not take.)
  return { command: expand(command), args };
}

async function start() {
  const cfg = settings();
  const executable = serverExecutable(cfg);
  if (!executable) {
    // Not awaited: a restart queued behind this start must not wait for the user's click.
    vscode.window.showWarningMessage(
      'codelm: set "codelm.run" (a trained run directory) or "codelm.server" (a URL) to get completions.',
      'Open Settings',
    ).then((open) => open && vscode.commands.executeCommand('workbench.action.openSettings', 'codelm'));
    return;
  }
  const selector = (cfg.get('languages') ?? ['python']).flatMap((language) => [
    { scheme: 'file', language }, { scheme: 'untitled', language }]);
  client = new LanguageClient('codelm', 'codelm', executable, {
    documentSelector: selector,
    initializationOptions: serverSettings(),
    outputChannel: log,
    // A failing backend answers each request with an error: log it, no pop-up per keystroke.
    revealOutputChannelOn: RevealOutputChannelOn.Never,
    middleware: {
      // The server also answers textDocument/completion (for editors without ghost text).
      // VS Code shows the same suggestion as ghost text already, so the suggestion list
      // asks it only when codelm.completionMenu is on; read at each request.
      provideCompletionItem: (document, position, context, token, next) =>
        settings().get('completionMenu') ? next(document, position, context, token) : undefined,
    },
  });
  // Accepting a suggestion: VS Code runs the item's command, `codelm.acceptCompletion` [id].
  // The server lists that command in executeCommandProvider, so the client's built-in
  // ExecuteCommandFeature registers it as a VS Code command that sends workspace/executeCommand
  // (registering it here as well would fail: "command already exists").
  try {
    await client.start();
  } catch (error) {
    // The client has shown the error already (e.g. `codelm` not found: see codelm.command).
  }
}

async function stop() {
  const running = client;
  client = undefined;
  if (running) await running.stop().catch(() => undefined); // throws when it never started
}

function restart() {
  // A failure is logged and does not block the next restart.
  queue = queue.then(stop).then(start).catch((error) => log.error(`codelm: ${error?.stack ?? error}`));
  return queue;
}

async function showStats() {
  if (!client?.isRunning()) {
    vscode.window.showWarningMessage('codelm: the language server is not running.');
    return;
  }
  try {
    // Local telemetry, answered from the server's memory: nothing is sent anywhere else.
    const stats = await client.sendRequest('codelm/stats', {});
    statsChannel.clear();
    statsChannel.appendLine(JSON.stringify(stats, null, 2));
    statsChannel.show(true);
  } catch (error) {
    vscode.window.showErrorMessage(`codelm/stats failed: ${error?.message ?? error}`);
  }
}

function onConfigurationChange(event) {
  if (!event.affectsConfiguration('codelm')) return;
  if (LAUNCH_KEYS.some((key) => event.affectsConfiguration(`codelm.${key}`)) || !client) {
    restart();
  } else if (SERVER_KEYS.some((key) => event.affectsConfiguration(`codelm.${key}`)) && client.isRunning()) {
    client.sendNotification('workspace/didChangeConfiguration', { settings: serverSettings() })
      .catch((error) => log.error(`didChangeConfiguration: ${error?.message ?? error}`));
  }
}

function activate(context) {
  log = vscode.window.createOutputChannel('codelm', { log: true });
  statsChannel = vscode.window.createOutputChannel('codelm stats', 'json');
  context.subscriptions.push(
    log,
    statsChannel,
    vscode.commands.registerCommand('codelm.showStats', showStats),
    vscode.commands.registerCommand('codelm.restart', restart),
    vscode.workspace.onDidChangeConfiguration(onConfigurationChange),
  );
  restart(); // not awaited: loading a model can take a while, activation need not wait
}

function deactivate() {
  queue = queue.then(stop);
  return queue;
}

module.exports = { activate, deactivate };
