// A second LSP client for `codelm lsp`, written with VS Code's own protocol libraries
// (vscode-jsonrpc and vscode-languageserver-protocol): it spawns the server command given
// after `--`, runs the same session as the Python end-to-end test (initialize with VS
// Code-like client capabilities, open documents, inline completions in the middle of a
// function, after `def f(x):`, before a suffix that already closes the brackets, a cancelled
// request, a request superseded by typing, bad positions and URIs, the completion fallback,
// accepting a suggestion, stats, shutdown), checks every answer's shape itself and prints one
// JSON object describing what it saw on stdout. Exit 0 on success; on a violation, a
// one-line message on stderr and exit 1. Driven by tests/test_lsp_node.py.
//
//   node client.mjs [--workspace DIR] -- PYTHON -m codelm lsp RUN

import { spawn } from 'node:child_process';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import {
  CancellationTokenSource,
  CompletionRequest,
  createMessageConnection,
  DidChangeConfigurationNotification,
  DidChangeTextDocumentNotification,
  DidOpenTextDocumentNotification,
  ErrorCodes,
  ExecuteCommandRequest,
  ExitNotification,
  InitializedNotification,
  InitializeRequest,
  InlineCompletionRequest,
  InlineCompletionTriggerKind,
  LSPErrorCodes,
  NotificationType,
  RequestType,
  ShutdownRequest,
  StreamMessageReader,
  StreamMessageWriter,
  TextDocumentSyncKind,
} from 'vscode-languageserver-protocol/node';

const STEP_TIMEOUT_MS = 30_000;
const ACCEPT_COMMAND = 'codelm.acceptCompletion';
// codelm's own messages: the protocol library has no types for them.
const AcceptNotification = new NotificationType('codelm/acceptCompletion');
const StatsRequest = new RequestType('codelm/stats');

class Violation extends Error {}

function check(cond, message) {
  if (!cond) throw new Violation(message);
}

function parseArgs(argv) {
  let workspace = process.cwd();
  const sep = argv.indexOf('--');
  const opts = sep < 0 ? [] : argv.slice(0, sep);
  const command = sep < 0 ? argv : argv.slice(sep + 1);
  for (let i = 0; i < opts.length; i++) {
    if (opts[i] === '--workspace') workspace = path.resolve(opts[++i]);
    else throw new Violation(`unknown option ${opts[i]}`);
  }
  if (command.length === 0) {
    throw new Violation('usage: node client.mjs [--workspace DIR] -- SERVER-COMMAND...');
  }
  return { workspace, command };
}

// The documents, kept here as the editor would, so positions and edits are computed from text.
// JavaScript strings count UTF-16 code units, the position encoding this client announces.
const MAIN = [
  'import os',
  '',
  '',
  'def add(a, b):',
  '    total = a + b',
  '    return total',
  '',
  '',
  'def f(x):',
  '    ',
  '',
  '',
  'def greet(name):',
  '    s = "héllo 😀"',
  '    return s + name',
  '',
  '',
  'print(max(add(1, 2), ))',
  '',
].join('\n');

const HELPERS = [
  'def clamp(x, lo, hi):',
  '    if x < lo:',
  '        return lo',
  '    if x > hi:',
  '        return hi',
  '    return x',
  '',
].join('\n');

function lineOf(text, line) {
  return text.split('\n')[line];
}

function findLine(text, prefix) {
  const lines = text.split('\n');
  const i = lines.findIndex((l) => l.startsWith(prefix));
  if (i < 0) throw new Error(`no line starts with ${JSON.stringify(prefix)}`);
  return i;
}

function offsetAt(text, pos) {
  const lines = text.split('\n');
  let off = 0;
  for (let i = 0; i < pos.line; i++) off += lines[i].length + 1;
  return off + pos.character;
}

function applyChange(text, range, newText) {
  return text.slice(0, offsetAt(text, range.start)) + newText + text.slice(offsetAt(text, range.end));
}

function withTimeout(promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new Violation(`${what}: no answer within ${STEP_TIMEOUT_MS / 1000} s`)),
      STEP_TIMEOUT_MS,
    );
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Resolves to {result} or {error: {code, message}}; a timeout or a lost connection throws.
async function settle(promise, what) {
  try {
    return { result: await withTimeout(promise, what) };
  } catch (err) {
    if (err instanceof Violation) throw err;
    if (typeof err?.code === 'number') return { error: { code: err.code, message: String(err.message) } };
    throw new Violation(`${what}: ${err?.message ?? err}`);
  }
}

function isPosition(p) {
  return p && Number.isInteger(p.line) && Number.isInteger(p.character) && p.line >= 0 && p.character >= 0;
}

// An inlineCompletion result must be an array (or an InlineCompletionList) of items whose
// range starts at the cursor and ends on the cursor's line, at or after it.
function checkInlineItems(result, pos, what) {
  const items = Array.isArray(result) ? result : result?.items;
  check(Array.isArray(items), `${what}: result is not an array of InlineCompletionItem: ${JSON.stringify(result)}`);
  for (const item of items) {
    const shown = JSON.stringify(item);
    check(typeof item?.insertText === 'string', `${what}: item without a string insertText: ${shown}`);
    check(item.range && isPosition(item.range.start) && isPosition(item.range.end), `${what}: item without a range: ${shown}`);
    const { start, end } = item.range;
    check(start.line === pos.line && start.character === pos.character,
      `${what}: range starts at ${start.line}:${start.character}, not at the cursor ${pos.line}:${pos.character}`);
    check(end.line === pos.line && end.character >= pos.character,
      `${what}: range ends at ${end.line}:${end.character}, not on the cursor's line at or after it`);
    if (item.command !== undefined) {
      check(item.command.command === ACCEPT_COMMAND, `${what}: item command is not ${ACCEPT_COMMAND}: ${shown}`);
      check(typeof item.command.title === 'string', `${what}: item command without a title: ${shown}`);
      check(Array.isArray(item.command.arguments) && item.command.arguments.length >= 1,
        `${what}: item command without the completion id argument: ${shown}`);
    }
  }
  return items;
}

function checkInitializeResult(init) {
  const caps = init?.capabilities;
  check(caps && typeof caps === 'object', 'initialize: no capabilities in the result');
  check(Boolean(caps.inlineCompletionProvider), 'initialize: inlineCompletionProvider is not announced');
  check(Boolean(caps.completionProvider), 'initialize: completionProvider is not announced');
  const sync = caps.textDocumentSync;
  const change = typeof sync === 'number' ? sync : sync?.change;
  check(change === TextDocumentSyncKind.Incremental,
    `initialize: textDocumentSync change is ${JSON.stringify(change)}, not incremental (2)`);
  const commands = caps.executeCommandProvider?.commands;
  check(Array.isArray(commands) && commands.includes(ACCEPT_COMMAND),
    `initialize: executeCommandProvider.commands lacks ${ACCEPT_COMMAND}: ${JSON.stringify(commands)}`);
  check(caps.positionEncoding === undefined || caps.positionEncoding === 'utf-16',
    `initialize: chose position encoding ${caps.positionEncoding}, but the client only offered utf-16`);
  return caps;
}

function checkStats(stats) {
  check(stats && typeof stats === 'object', `codelm/stats: not an object: ${JSON.stringify(stats)}`);
  for (const key of ['requests', 'cache_hits', 'cancelled', 'superseded', 'shown', 'accepted']) {
    check(Number.isInteger(stats[key]) && stats[key] >= 0, `codelm/stats: ${key} is not a count: ${JSON.stringify(stats[key])}`);
  }
  check(typeof stats.accept_rate === 'number', `codelm/stats: accept_rate is not a number: ${JSON.stringify(stats.accept_rate)}`);
  const lat = stats.latency_ms;
  check(lat && typeof lat === 'object', 'codelm/stats: no latency_ms object');
  check(Number.isInteger(lat.n), `codelm/stats: latency_ms.n is not an integer: ${JSON.stringify(lat.n)}`);
  for (const key of ['p50', 'p95']) {
    check(lat[key] === null || typeof lat[key] === 'number', `codelm/stats: latency_ms.${key} is not a number`);
  }
  return stats;
}

// Capabilities as VS Code's language client announces them (the parts this session uses).
function clientCapabilities() {
  return {
    general: {
      positionEncodings: ['utf-16'],
      staleRequestSupport: {
        cancel: true,
        retryOnContentModified: ['textDocument/semanticTokens/full', 'textDocument/semanticTokens/range'],
      },
      regularExpressions: { engine: 'ECMAScript', version: 'ES2020' },
      markdown: { parser: 'marked', version: '1.1.0' },
    },
    workspace: {
      applyEdit: true,
      workspaceEdit: { documentChanges: true },
      didChangeConfiguration: { dynamicRegistration: true },
      executeCommand: { dynamicRegistration: true },
      workspaceFolders: true,
      configuration: true,
    },
    textDocument: {
      synchronization: { dynamicRegistration: true, willSave: true, willSaveWaitUntil: true, didSave: true },
      completion: {
        dynamicRegistration: true,
        contextSupport: true,
        completionItem: {
          snippetSupport: true,
          commitCharactersSupport: true,
          documentationFormat: ['markdown', 'plaintext'],
          deprecatedSupport: true,
          preselectSupport: true,
          tagSupport: { valueSet: [1] },
          insertReplaceSupport: true,
          resolveSupport: { properties: ['documentation', 'detail', 'additionalTextEdits'] },
          insertTextModeSupport: { valueSet: [1, 2] },
          labelDetailsSupport: true,
        },
        insertTextMode: 2,
        completionItemKind: { valueSet: Array.from({ length: 25 }, (_, i) => i + 1) },
        completionList: { itemDefaults: ['commitCharacters', 'editRange', 'insertTextFormat', 'insertTextMode', 'data'] },
      },
      inlineCompletion: { dynamicRegistration: true },
    },
    window: {
      showMessage: { messageActionItem: { additionalPropertiesSupport: true } },
      showDocument: { support: true },
      workDoneProgress: true,
    },
  };
}

async function main() {
  const { workspace, command } = parseArgs(process.argv.slice(2));
  const seen = { server: command.slice(1).join(' '), steps: {}, logs: [] };
  const settings = { temperature: 0, maxLines: 8, maxTokens: 24, debounceMs: 30, context: true };

  const proc = spawn(command[0], command.slice(1), { stdio: ['pipe', 'pipe', 'inherit'] });
  let exited = null;
  let expectExit = false;
  const exitedPromise = new Promise((resolve) => {
    proc.on('exit', (code, signal) => {
      exited = { code, signal };
      resolve(exited);
    });
  });
  let broken;
  const died = new Promise((_, reject) => {
    broken = reject;
    proc.on('error', (err) => reject(new Violation(`could not start ${command[0]}: ${err.message}`)));
    exitedPromise.then(({ code, signal }) => {
      if (!expectExit) reject(new Violation(`the server exited early (code ${code}, signal ${signal})`));
    });
  });
  died.catch(() => {}); // raced against every step below

  proc.stdin.on('error', () => {}); // a dead server shows up as its exit, not as EPIPE
  const connection = createMessageConnection(
    new StreamMessageReader(proc.stdout),
    new StreamMessageWriter(proc.stdin),
  );
  // Requests from the server, answered as VS Code would.
  connection.onRequest('workspace/configuration', (params) =>
    params.items.map((item) => (item.section === 'codelm' || !item.section ? settings : null)));
  connection.onRequest('client/registerCapability', () => null);
  connection.onRequest('client/unregisterCapability', () => null);
  connection.onRequest('window/workDoneProgress/create', () => null);
  connection.onRequest('window/showMessageRequest', () => null);
  connection.onNotification('window/logMessage', (p) => seen.logs.push(p.message));
  connection.onNotification('window/showMessage', (p) => seen.logs.push(p.message));
  connection.onNotification(() => {}); // $/progress, telemetry, publishDiagnostics...
  // Bytes on stdout that are not LSP messages (a stray print) break the stream: fail at once.
  connection.onError(([err]) => broken(new Violation(`the server's stdout is not a clean LSP stream: ${err?.message ?? err}`)));
  connection.listen();

  const step = (promise, what) => settle(Promise.race([promise, died]), what);
  const workspaceUri = pathToFileURL(workspace).href;
  const mainUri = pathToFileURL(path.join(workspace, 'main.py')).href;
  const helpersUri = pathToFileURL(path.join(workspace, 'helpers.py')).href;
  let text = MAIN;
  let version = 1;

  try {
    // --- initialize -------------------------------------------------------------------
    const init = await step(connection.sendRequest(InitializeRequest.type, {
      processId: process.pid,
      clientInfo: { name: 'codelm node test client (vscode-languageserver-protocol)', version: '1' },
      locale: 'en',
      rootPath: workspace,
      rootUri: workspaceUri,
      workspaceFolders: [{ uri: workspaceUri, name: path.basename(workspace) }],
      capabilities: clientCapabilities(),
      initializationOptions: { codelm: settings },
      trace: 'off',
    }), 'initialize');
    check(!init.error, `initialize failed: ${JSON.stringify(init.error)}`);
    seen.capabilities = checkInitializeResult(init.result);
    seen.serverInfo = init.result.serverInfo ?? null;
    await connection.sendNotification(InitializedNotification.type, {});
    await connection.sendNotification(DidChangeConfigurationNotification.type, { settings: { codelm: settings } });

    await connection.sendNotification(DidOpenTextDocumentNotification.type, {
      textDocument: { uri: helpersUri, languageId: 'python', version: 1, text: HELPERS },
    });
    await connection.sendNotification(DidOpenTextDocumentNotification.type, {
      textDocument: { uri: mainUri, languageId: 'python', version, text },
    });

    const inline = (pos, triggerKind, token) => connection.sendRequest(InlineCompletionRequest.type, {
      textDocument: { uri: mainUri },
      position: pos,
      context: { triggerKind, selectedCompletionInfo: undefined },
    }, token);
    const record = (name, pos, answer) => {
      const entry = { position: pos };
      if (answer.error) entry.error = answer.error;
      else entry.items = checkInlineItems(answer.result, pos, name);
      seen.steps[name] = entry;
      return entry;
    };
    const ask = async (name, pos, triggerKind) => {
      const entry = record(name, pos, await step(inline(pos, triggerKind), name));
      check(!entry.error, `${name}: error ${JSON.stringify(entry.error)}`);
      return entry;
    };
    const invoked = (name, pos) => ask(name, pos, InlineCompletionTriggerKind.Invoked);
    const automatic = (name, pos) => ask(name, pos, InlineCompletionTriggerKind.Automatic);

    // --- invoked inline completions at four places ---------------------------------------
    const ret = findLine(text, '    return total');
    await invoked('middle_of_function', { line: ret, character: 4 });
    const def = findLine(text, 'def f(x):');
    const afterDef = await invoked('after_def', { line: def, character: lineOf(text, def).length });
    const call = findLine(text, 'print(max(');
    await invoked('suffix_closes_bracket', { line: call, character: lineOf(text, call).indexOf('))') });
    // UTF-16: the emoji is two code units, so this end-of-line position is past the line's
    // length in code points; a server that counts code points would reject it.
    const emoji = findLine(text, '    s = "héllo');
    await invoked('end_of_line_after_emoji', { line: emoji, character: lineOf(text, emoji).length });

    // An automatic request (one greedy suggestion), then the same again with nothing changed:
    // the same suggestions. (Invoked requests add sampled candidates, which may differ.)
    const auto = await automatic('automatic_after_def', afterDef.position);
    const repeat = await automatic('repeat_after_def', afterDef.position);
    const texts = (entry) => JSON.stringify(entry.items.map((i) => i.insertText));
    check(texts(repeat) === texts(auto),
      `repeat_after_def: the same automatic request on the same text gave ${texts(repeat)}, first ${texts(auto)}`);

    // --- a cancelled request: -32800, or its normal result if it had already finished -----
    {
      const pos = { line: findLine(text, '    return s + name'), character: 4 };
      const source = new CancellationTokenSource();
      const pending = inline(pos, InlineCompletionTriggerKind.Invoked, source.token);
      source.cancel();
      const answer = await step(pending, 'cancelled');
      const entry = record('cancelled', pos, answer);
      check(!entry.error || entry.error.code === LSPErrorCodes.RequestCancelled,
        `cancelled: error code ${entry.error?.code}, expected ${LSPErrorCodes.RequestCancelled} (RequestCancelled) or a result`);
      source.dispose();
    }

    // --- superseded by typing: request, type a character, request again -----------------
    // (at a cursor never asked before: a cached answer would come back before the typing)
    {
      const pos = { line: def + 1, character: 4 };
      const first = inline(pos, InlineCompletionTriggerKind.Automatic);
      const range = { start: pos, end: pos };
      text = applyChange(text, range, 'r');
      version += 1;
      const typed = connection.sendNotification(DidChangeTextDocumentNotification.type, {
        textDocument: { uri: mainUri, version },
        contentChanges: [{ range, text: 'r' }],
      });
      const pos2 = { line: pos.line, character: pos.character + 1 };
      const second = inline(pos2, InlineCompletionTriggerKind.Automatic);
      await typed;
      const a = record('superseded', pos, await step(first, 'superseded'));
      check(!a.error, `superseded: error ${JSON.stringify(a.error)} instead of []`);
      check(a.items.length === 0, `superseded: a request superseded by typing returned ${a.items.length} item(s), not []`);
      const b = record('after_typing', pos2, await step(second, 'after_typing'));
      check(!b.error, `after_typing: error ${JSON.stringify(b.error)}`);
    }

    // --- invalid requests: an error each, and the server keeps serving -------------------
    const lines = text.split('\n').length;
    for (const [name, params] of [
      ['outside_document', { textDocument: { uri: mainUri }, position: { line: lines + 100, character: 0 } }],
      ['past_end_of_line', { textDocument: { uri: mainUri }, position: { line: 0, character: lineOf(text, 0).length + 40 } }],
      ['unknown_uri', { textDocument: { uri: pathToFileURL(path.join(workspace, 'never_opened.py')).href }, position: { line: 0, character: 0 } }],
    ]) {
      const answer = await step(connection.sendRequest(InlineCompletionRequest.type, {
        ...params,
        context: { triggerKind: InlineCompletionTriggerKind.Invoked },
      }), name);
      seen.steps[name] = { position: params.position, ...(answer.error ? { error: answer.error } : { result: answer.result }) };
      check(answer.error?.code === ErrorCodes.InvalidParams,
        `${name}: expected error ${ErrorCodes.InvalidParams} (InvalidParams), got ${JSON.stringify(answer.error ?? answer.result)}`);
    }

    // --- the completion fallback ---------------------------------------------------------
    {
      const pos = afterDef.position;
      const answer = await step(connection.sendRequest(CompletionRequest.type, {
        textDocument: { uri: mainUri },
        position: pos,
        context: { triggerKind: 1 },
      }), 'completion');
      check(!answer.error, `completion: error ${JSON.stringify(answer.error)}`);
      const list = answer.result;
      check(list && !Array.isArray(list) && Array.isArray(list.items) && typeof list.isIncomplete === 'boolean',
        `completion: not a CompletionList: ${JSON.stringify(list)}`);
      check(list.items.length <= 1, `completion: ${list.items.length} items, at most one expected`);
      for (const item of list.items) {
        check(typeof item.label === 'string' && !item.label.includes('\n'),
          `completion: the label is not one line: ${JSON.stringify(item.label)}`);
      }
      seen.steps.completion = { position: pos, list };
    }

    // --- settings change, then accept what was shown ---------------------------------------
    await connection.sendNotification(DidChangeConfigurationNotification.type, {
      settings: { codelm: { ...settings, maxLines: 4 } },
    });
    const ids = [];
    for (const entry of Object.values(seen.steps)) {
      for (const item of entry.items ?? []) {
        const id = item.command?.arguments[0];
        if (id !== undefined && !ids.includes(id)) ids.push(id);
      }
    }
    seen.accepted = [];
    if (ids.length >= 1) {
      const answer = await step(connection.sendRequest(ExecuteCommandRequest.type, {
        command: ACCEPT_COMMAND,
        arguments: [ids[0]],
      }), 'executeCommand');
      check(!answer.error, `workspace/executeCommand ${ACCEPT_COMMAND}: error ${JSON.stringify(answer.error)}`);
      seen.accepted.push(ids[0]);
    }
    if (ids.length >= 2) {
      await connection.sendNotification(AcceptNotification, { id: ids[ids.length - 1] });
      seen.accepted.push(ids[ids.length - 1]);
    }

    // --- stats ------------------------------------------------------------------------------
    const stats = await step(connection.sendRequest(StatsRequest, {}), 'codelm/stats');
    check(!stats.error, `codelm/stats: error ${JSON.stringify(stats.error)}`);
    seen.stats = checkStats(stats.result);
    check(seen.stats.accepted >= seen.accepted.length,
      `codelm/stats: accepted = ${seen.stats.accepted} after accepting ${seen.accepted.length}`);

    // --- shutdown and exit -----------------------------------------------------------------
    const down = await step(connection.sendRequest(ShutdownRequest.type), 'shutdown');
    check(!down.error, `shutdown: error ${JSON.stringify(down.error)}`);
    expectExit = true;
    await connection.sendNotification(ExitNotification.type);
    let timer;
    const gone = await Promise.race([
      exitedPromise,
      new Promise((resolve) => { timer = setTimeout(() => resolve(null), 10_000); }),
    ]);
    clearTimeout(timer);
    check(gone !== null, 'exit: the server still runs 10 s after the exit notification');
    seen.exit = gone;
    check(gone.code === 0, `exit: the server exited with code ${gone.code} (signal ${gone.signal}) after shutdown`);
  } finally {
    connection.dispose();
    if (exited === null) proc.kill('SIGKILL');
  }
  process.stdout.write(`${JSON.stringify(seen)}\n`);
}

main().then(
  () => process.exit(0),
  (err) => {
    const msg = err instanceof Violation ? err.message : `client error: ${err?.stack ?? err}`;
    process.stderr.write(`lsp-node-client: ${msg.split('\n')[0]}\n`);
    process.exit(1);
  },
);
