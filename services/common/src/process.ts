/**
 * Whether a process of this machine (this PID namespace) runs under `pid`: signal 0 checks without sending
 * anything. EPERM means it runs under another user. A pid may have been reused by an unrelated process since
 * the one it named ended, so a live answer means "maybe still it", a dead one means "certainly gone".
 */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
