/**
 * What the benchmarks need and the project does not: Debian's nginx and wrk (apt-get) and
 * configurable-http-proxy from npm, into bench/.deps (gitignored; not a project dependency).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const DEPS_DIR = fileURLToPath(new URL('../.deps/', import.meta.url));
export const CHP_BIN = `${DEPS_DIR}node_modules/configurable-http-proxy/bin/configurable-http-proxy`;

function have(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

export function ensureDeps(log: (msg: string) => void): void {
  const missing = ['nginx', 'wrk', 'taskset', 'prlimit'].filter((c) => !have(c));
  if (missing.length > 0) {
    const pkgs = new Set(missing.map((c) => (c === 'taskset' || c === 'prlimit' ? 'util-linux' : c)));
    log(`installing ${[...pkgs].join(', ')} with apt-get`);
    const sudo = process.getuid?.() === 0 ? [] : ['sudo'];
    const apt = (args: string[]): void => {
      execFileSync(sudo.length > 0 ? 'sudo' : 'apt-get', [...(sudo.length > 0 ? ['apt-get'] : []), ...args], {
        stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
      });
    };
    apt(['update', '-q']);
    apt(['install', '-y', '-q', '--no-install-recommends', ...pkgs]);
  }
  if (!existsSync(CHP_BIN)) {
    log('installing configurable-http-proxy into bench/.deps');
    execFileSync('npm', ['install', '--prefix', DEPS_DIR, '--no-save', '--no-package-lock', '--no-audit', '--no-fund', 'configurable-http-proxy@5'], { stdio: 'inherit' });
  }
}
