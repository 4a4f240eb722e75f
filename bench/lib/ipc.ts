/** Request/reply over a child's IPC channel, by message type. */
import type { ChildProcess } from 'node:child_process';

export interface Message { readonly type: string; readonly [key: string]: unknown }

export function nextMessage<T extends Message>(child: ChildProcess, type: string, timeoutMs = 120_000): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => { cleanup(); reject(new Error(`no "${type}" message within ${timeoutMs} ms`)); }, timeoutMs);
    const onMessage = (m: Message): void => {
      if (m.type !== type) return;
      cleanup();
      resolve(m as T);
    };
    const onExit = (code: number | null): void => { cleanup(); reject(new Error(`child exited (${code}) before "${type}"`)); };
    const cleanup = (): void => {
      clearTimeout(timer);
      child.off('message', onMessage);
      child.off('exit', onExit);
    };
    child.on('message', onMessage);
    child.once('exit', onExit);
  });
}

export function ask<T extends Message>(child: ChildProcess, msg: Message, replyType: string, timeoutMs?: number): Promise<T> {
  const reply = nextMessage<T>(child, replyType, timeoutMs);
  child.send(msg);
  return reply;
}

/** Epoch milliseconds with sub-millisecond precision (comparable across processes). */
export const nowMs = (): number => performance.timeOrigin + performance.now();
