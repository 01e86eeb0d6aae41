/**
 * Sending a stored resource, or a byte range of it, to a sink such as an HTTP answer (PROTOCOL.md §6.4, §9).
 *
 * A file stream allocates a new buffer for every read, so a 1 GiB download leaves 1 GiB of buffers for the
 * garbage collector, which only runs once tens of MiB of them have piled up: the process's resident memory
 * swells by as much. Here a few buffers are read into and written in turn, each one reused once the sink's
 * write callback says it is done with it, so a download of any size holds READ_BUFFERS × READ_BUFFER_SIZE
 * bytes and makes no garbage; and while one buffer travels to the socket the next is read from the disk.
 */
import type { FileHandle } from 'node:fs/promises';
import type { Writable } from 'node:stream';

/** Bytes per read: a 1 GiB resource is 4,096 thread-pool round trips, not 16,384 of a file stream's 64 KiB. */
const READ_BUFFER_SIZE = 256 * 1024;
/** Buffers in turn: one being read while the others wait in the socket. */
const READ_BUFFERS = 4;

export class BlobReadError extends Error {
  override readonly name = 'BlobReadError';
}

/**
 * An open resource, positioned on the bytes to send. Every reader must end with `pipeTo` or `close`, which
 * close the file.
 */
export class BlobReader {
  #closed = false;

  /** `start` and `end` are inclusive offsets, checked against the file by the store that opens it. */
  constructor(
    private readonly file: FileHandle,
    readonly start: number,
    readonly end: number,
  ) {}

  /** How many bytes `pipeTo` writes. */
  get length(): number {
    return this.end - this.start + 1;
  }

  /**
   * Writes the bytes to `sink` and ends it; resolves once it finished. The sink must be done with a chunk
   * when its write callback runs, as an HTTP answer or a socket is (not a PassThrough, which hands the same
   * buffer on). When the sink closes early or fails (the client went away: BlobReadError) or a read fails,
   * the sink is destroyed and the promise rejects. The file is closed either way.
   */
  async pipeTo(sink: Writable): Promise<void> {
    if (this.#closed) throw new TypeError('the blob reader is closed');
    this.#closed = true;
    const free: Buffer[] = [];
    let allocated = 0;
    let failure: Error | undefined;
    let wake: (() => void) | undefined;
    const fail = (error: Error) => {
      failure ??= error;
      wake?.();
    };
    const onClose = () => {
      if (!sink.writableFinished) fail(new BlobReadError('the receiver closed the connection before the end'));
    };
    sink.on('close', onClose);
    try {
      const stop = this.end + 1;
      for (let position = this.start; position < stop;) {
        let buffer = free.pop();
        if (buffer === undefined && allocated < READ_BUFFERS) {
          buffer = Buffer.allocUnsafeSlow(Math.min(READ_BUFFER_SIZE, this.length));
          allocated++;
        }
        if (buffer === undefined) {
          // Every buffer is with the sink: wait until it hands one back (or fails).
          await new Promise<void>((resolve) => (wake = resolve));
          wake = undefined;
          if (failure !== undefined) throw failure;
          continue;
        }
        const { bytesRead } = await this.file.read(buffer, 0, Math.min(buffer.byteLength, stop - position), position);
        if (failure !== undefined) throw failure;
        if (bytesRead === 0) throw new BlobReadError(`the file ended at byte ${position}, before byte ${this.end}`);
        position += bytesRead;
        const reused = buffer;
        sink.write(reused.subarray(0, bytesRead), (error) => {
          if (error) return fail(new BlobReadError(`the receiver failed: ${error.message}`, { cause: error }));
          free.push(reused);
          wake?.();
        });
      }
      await new Promise<void>((resolve, reject) => {
        if (failure !== undefined) return reject(failure);
        // The last writes still call back as they complete: only a failure ends the wait early.
        wake = () => {
          if (failure !== undefined) reject(failure);
        };
        sink.end(() => resolve());
      });
    } catch (e) {
      if (!sink.destroyed) sink.destroy(e as Error);
      throw e;
    } finally {
      sink.off('close', onClose);
      await this.file.close().catch(() => undefined);
    }
  }

  /** Closes the file without sending (a HEAD request, or an answer refused after opening). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.file.close().catch(() => undefined);
  }
}
