#!/usr/bin/env node
// The launcher behind `npm start`, `npm test` and the other npm scripts: runs a command under a
// Node that can run this project's TypeScript directly (type stripping, Node >= 22.18).
//
// Plain JavaScript on purpose, and only syntax old Nodes understand: it is the one file that
// must run on the machine's own Node, whatever its version. When that Node is too old it says
// so in one line, installs Node 24 into .tools/ from the npm registry (once), and runs the
// command under it.
//
//   node scripts/launch.mjs [--max-run-ms N] [--label TEXT] -- node|npm|CMD [ARGS...]
//
// - `node` is the chosen Node; `npm` is the npm that started us, run by the chosen Node.
// - The chosen Node's folder goes first on PATH, so nested `node` and `npm run` use it too.
// - The command runs in its own process group: signals are forwarded to the whole group (once:
//   a Ctrl-C reaches this process twice, from the terminal and again from npm), and when the
//   command ends, anything it left running in its group is stopped.
// - --max-run-ms bounds the whole run: past it the group gets SIGTERM, then SIGKILL, and the
//   exit code is 124 (as timeout(1)). Nothing behind `npm test` can hang CI.
// - Exit codes and signals pass through: a command killed by SIGTERM kills us by SIGTERM.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, realpathSync } from 'node:fs';
import { constants } from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const MIN = [22, 18];
const TOOLS_NODE_SPEC = 'node@24';
const root = fileURLToPath(new URL('..', import.meta.url));
const toolsDir = process.env.SMART_PROXY_TOOLS_DIR || join(root, '.tools');
const toolsNode = join(toolsDir, 'node_modules', '.bin', process.platform === 'win32' ? 'node.cmd' : 'node');
// After the command's end or a timeout's SIGTERM: how long the stragglers get before SIGKILL.
const KILL_GRACE_MS = 10000;
// The same signal twice within this window is one keypress delivered twice (see above).
const SIGNAL_COALESCE_MS = 500;

function fail(message, code) {
  process.stderr.write('smart-proxy: ' + message + '\n');
  process.exit(code === undefined ? 1 : code);
}

function parseArgs(argv) {
  const opts = { maxRunMs: 0, label: '', command: [] };
  let i = 0;
  for (; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--') { i++; break; }
    if (a === '--max-run-ms' || a === '--label') {
      const v = argv[++i];
      if (v === undefined) fail('launch: ' + a + ' needs a value', 2);
      if (a === '--label') opts.label = v;
      else {
        opts.maxRunMs = Number(v);
        if (!Number.isFinite(opts.maxRunMs) || opts.maxRunMs < 0) fail('launch: --max-run-ms: expected milliseconds, got "' + v + '"', 2);
      }
      continue;
    }
    break;
  }
  opts.command = argv.slice(i);
  if (opts.command.length === 0) fail('launch: no command (usage: launch.mjs [--max-run-ms N] [--label TEXT] -- CMD [ARGS...])', 2);
  if (!opts.label) opts.label = opts.command.join(' ');
  // An operator's override of a script's bound, e.g. on a slow machine.
  const env = process.env.SMART_PROXY_MAX_RUN_MS;
  if (env !== undefined && env !== '' && opts.maxRunMs > 0) {
    const n = Number(env);
    if (!Number.isFinite(n) || n < 0) fail('SMART_PROXY_MAX_RUN_MS: expected milliseconds, got "' + env + '"', 2);
    opts.maxRunMs = n;
  }
  return opts;
}

function versionOk(version) {
  const parts = String(version).replace(/^v/, '').split('.').map(Number);
  return parts[0] > MIN[0] || (parts[0] === MIN[0] && parts[1] >= MIN[1]);
}

function versionOf(nodeBin) {
  const r = spawnSync(nodeBin, ['-p', 'process.versions.node'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

/** The npm that started us, as [program, ...args] run by `nodeBin`; else `npm` from PATH. */
function npmCommand(nodeBin) {
  const execPath = process.env.npm_execpath;
  if (execPath && /\.(c?js)$/.test(execPath) && existsSync(execPath)) return [nodeBin, execPath];
  return [process.platform === 'win32' ? 'npm.cmd' : 'npm'];
}

function chooseNode() {
  if (versionOk(process.versions.node)) return process.execPath;
  const have = existsSync(toolsNode) ? versionOf(toolsNode) : undefined;
  const min = MIN.join('.');
  if (have !== undefined && versionOk(have)) {
    process.stderr.write('smart-proxy: Node ' + process.versions.node + ' is older than ' + min + ' (needed to run TypeScript directly); using Node ' + have + ' from .tools/\n');
    return toolsNode;
  }
  process.stderr.write('smart-proxy: Node ' + process.versions.node + ' is older than ' + min + ' (needed to run TypeScript directly); installing ' + TOOLS_NODE_SPEC + ' into .tools/ from the npm registry (once, about 30 MB)…\n');
  const npm = npmCommand(process.execPath);
  const r = spawnSync(npm[0], npm.slice(1).concat(['install', '--prefix', toolsDir, '--no-save', '--no-audit', '--no-fund', '--loglevel=error', TOOLS_NODE_SPEC]), { stdio: ['ignore', 'ignore', 'inherit'] });
  if (r.error) fail('cannot run npm to install ' + TOOLS_NODE_SPEC + ': ' + r.error.message + '. Install Node 24 yourself (nvm install, or nodejs.org) and run again.');
  const now = existsSync(toolsNode) ? versionOf(toolsNode) : undefined;
  if (r.status !== 0 || now === undefined || !versionOk(now)) {
    fail('installing ' + TOOLS_NODE_SPEC + ' into .tools/ failed (npm exit ' + r.status + '). Install Node 24 yourself (nvm install, or nodejs.org) and run again.');
  }
  process.stderr.write('smart-proxy: installed Node ' + now + ' into .tools/\n');
  return toolsNode;
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  const nodeBin = chooseNode();
  const env = Object.assign({}, process.env);
  if (nodeBin !== process.execPath) {
    // Nested `node …` and `#!/usr/bin/env node` scripts (npm, tsc, eslint) find the new Node.
    const binDir = dirname(realpathSync(nodeBin));
    env.PATH = binDir + delimiter + dirname(nodeBin) + delimiter + (env.PATH || '');
    env.npm_node_execpath = nodeBin;
  }
  const [first, ...rest] = opts.command;
  const argv = first === 'node' ? [nodeBin].concat(rest) : first === 'npm' ? npmCommand(nodeBin).concat(rest) : opts.command;

  const child = spawn(argv[0], argv.slice(1), { stdio: 'inherit', env, detached: process.platform !== 'win32' });
  const group = child.pid === undefined ? undefined : (process.platform === 'win32' ? child.pid : -child.pid);
  const killGroup = (signal) => {
    if (group === undefined) return false;
    try { process.kill(group, signal); return true; } catch { return false; }
  };

  const lastForwarded = new Map();
  const forward = (signal) => {
    const now = Date.now();
    const last = lastForwarded.get(signal);
    if (last !== undefined && now - last < SIGNAL_COALESCE_MS) return;
    lastForwarded.set(signal, now);
    killGroup(signal);
  };
  const forwarded = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT'];
  for (const s of forwarded) process.on(s, forward);

  let timedOut = false;
  let killTimer;
  const runTimer = opts.maxRunMs > 0
    ? setTimeout(() => {
      timedOut = true;
      process.stderr.write('\nsmart-proxy: "' + opts.label + '" did not finish within ' + Math.round(opts.maxRunMs / 1000) + ' s; stopping it (SIGTERM, then SIGKILL after ' + KILL_GRACE_MS / 1000 + ' s)\n');
      killGroup('SIGTERM');
      killTimer = setTimeout(() => killGroup('SIGKILL'), KILL_GRACE_MS);
      killTimer.unref();
    }, opts.maxRunMs)
    : undefined;

  child.on('error', (err) => {
    // A failed spawn never emits 'exit'.
    if (runTimer) clearTimeout(runTimer);
    fail('cannot run "' + argv[0] + '": ' + err.message, 127);
  });
  child.on('exit', (code, signal) => {
    if (runTimer) clearTimeout(runTimer);
    if (killTimer) clearTimeout(killTimer);
    for (const s of forwarded) process.off(s, forward);
    const finish = () => {
      if (timedOut) process.exit(124);
      if (!signal) process.exit(code === null ? 1 : code);
      process.kill(process.pid, signal);
      // Not every signal ends a process by default (SIGWINCH…): an exit code as a shell would.
      setTimeout(() => process.exit(128 + (constants.signals[signal] || 0)), 1000).unref();
    };
    // Whatever the command left running in its group (a leaked server, a stuck child) is
    // stopped here rather than outliving the run; said aloud, since it is a leak to fix.
    if (!killGroup('SIGTERM')) return finish();
    process.stderr.write('smart-proxy: "' + opts.label + '" left processes running; stopping them\n');
    const until = Date.now() + KILL_GRACE_MS;
    const poll = setInterval(() => {
      if (killGroup(0) && Date.now() < until) return;
      clearInterval(poll);
      killGroup('SIGKILL');
      finish();
    }, 50);
  });
}

main();
