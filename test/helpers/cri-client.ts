import { Client, credentials, Metadata, status as GrpcStatus, type ServiceError } from '@grpc/grpc-js';
import { BinaryReader, BinaryWriter, WireType } from '@bufbuild/protobuf/wire';
import { KataError, type ErrorKind } from '../../src/base/errors.js';
import * as cri from '../../src/protocol/gen/cri/api.js';

/**
 * A kubelet-like CRI v1 client (`runtime.v1.RuntimeService` and `runtime.v1.ImageService`) over gRPC, built from
 * kata-ts's own CRI proto subset (src/protocol/proto/cri/api.proto) and its ts-proto codecs.
 *
 * Every call is unary with a deadline (`timeoutMs`, default from `connect`). Requests are the generated message
 * types; top-level scalar, list and map fields may be left out (they get proto3 defaults), nested messages must
 * be complete: build them with `criMessage(Codec, {...})`. Failures reject with a `KataError` whose kind comes from
 * the gRPC status (NOT_FOUND -> NotFound, ...), whose code is `CRI_<STATUS>` and whose cause is the ServiceError.
 *
 * Nanosecond timestamps (created_at, started_at, finished_at, stats timestamps) do not fit a JS number exactly, and
 * the generated decoder (forceLong=number) refuses values above 2^53; the client reads them itself and hands them
 * over as numbers rounded to the nearest representable value (about 256 ns at today's dates).
 */

interface Codec<T> {
  encode(message: T, writer?: BinaryWriter): BinaryWriter;
  decode(input: BinaryReader | Uint8Array, length?: number): T;
}

const EMPTY = new Uint8Array(0);

/** A complete message of the codec's type: proto3 defaults overridden by `fields` (a shallow merge). */
export function criMessage<T>(codec: Codec<T>, fields: Partial<T> = {}): T {
  return { ...codec.decode(EMPTY), ...stripUndefined(fields) };
}

function stripUndefined<T>(o: Partial<T>): Partial<T> {
  const out: Partial<T> = {};
  for (const [k, v] of Object.entries(o) as [keyof T, T[keyof T] | undefined][]) if (v !== undefined) out[k] = v;
  return out;
}

export interface CallOptions {
  /** Deadline for this call; defaults to the client's `defaultTimeoutMs`. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/**
 * Where unsafe 64-bit varints sit in a response: field number -> either 'long' (a varint read as a lossy number)
 * or a nested message's own map. Repeated nested messages are handled the same way, element by element.
 */
interface LongFields {
  [fieldNo: number]: { name: string; inner?: LongFields };
}

const CONTAINER_STATUS_LONGS: LongFields = {
  4: { name: 'createdAt' },
  5: { name: 'startedAt' },
  6: { name: 'finishedAt' },
};
const TIMESTAMP_ONLY: LongFields = { 1: { name: 'timestamp' } };
const U64_VALUE: LongFields = { 1: { name: 'value' } };

const RESPONSE_LONGS: Record<string, LongFields> = {
  PodSandboxStatus: { 1: { name: 'status', inner: { 4: { name: 'createdAt' } } } },
  ListPodSandbox: { 1: { name: 'items', inner: { 4: { name: 'createdAt' } } } },
  ListContainers: { 1: { name: 'containers', inner: { 7: { name: 'createdAt' } } } },
  ContainerStatus: { 1: { name: 'status', inner: CONTAINER_STATUS_LONGS } },
  ContainerStats: {
    1: {
      name: 'stats',
      inner: {
        // Cumulative CPU time passes 2^53 ns after about 104 days of CPU: read it the same way.
        2: { name: 'cpu', inner: { ...TIMESTAMP_ONLY, 2: { name: 'usageCoreNanoSeconds', inner: U64_VALUE } } },
        3: { name: 'memory', inner: TIMESTAMP_ONLY },
        4: { name: 'writableLayer', inner: TIMESTAMP_ONLY },
      },
    },
  },
};

/**
 * Removes the varints named in `spec` from an encoded message (so the generated decoder never sees them) and
 * returns a function that writes them, as numbers, into the decoded object at the same place.
 */
function extractLongs(bytes: Uint8Array, spec: LongFields): { rest: Uint8Array; apply: (msg: unknown) => void } {
  const reader = new BinaryReader(bytes);
  const writer = new BinaryWriter();
  const setters: ((msg: Record<string, unknown>) => void)[] = [];
  const seen = new Map<number, number>();
  while (reader.pos < reader.len) {
    const [fieldNo, wireType] = reader.tag();
    const entry = spec[fieldNo];
    if (entry && !entry.inner && wireType === WireType.Varint) {
      const value = Number(BigInt.asIntN(64, BigInt(reader.int64())));
      setters.push((m) => (m[entry.name] = value));
      continue;
    }
    if (entry?.inner && wireType === WireType.LengthDelimited) {
      const index = seen.get(fieldNo) ?? 0;
      seen.set(fieldNo, index + 1);
      const inner = extractLongs(reader.bytes(), entry.inner);
      writer.tag(fieldNo, WireType.LengthDelimited).bytes(inner.rest);
      setters.push((m) => {
        const target = m[entry.name];
        // A repeated field decodes to an array (the n-th occurrence is the n-th element); a singular one to an object.
        inner.apply(Array.isArray(target) ? target[index] : target);
      });
      continue;
    }
    const raw = reader.skip(wireType, fieldNo);
    writer.tag(fieldNo, wireType).raw(raw);
  }
  return {
    rest: writer.finish(),
    apply: (msg) => {
      if (msg && typeof msg === 'object') for (const s of setters) s(msg as Record<string, unknown>);
    },
  };
}

const KIND_BY_STATUS: Partial<Record<GrpcStatus, ErrorKind>> = {
  [GrpcStatus.NOT_FOUND]: 'NotFound',
  [GrpcStatus.ALREADY_EXISTS]: 'AlreadyExists',
  [GrpcStatus.INVALID_ARGUMENT]: 'InvalidArgument',
  [GrpcStatus.FAILED_PRECONDITION]: 'FailedPrecondition',
  [GrpcStatus.UNAVAILABLE]: 'Unavailable',
  [GrpcStatus.DEADLINE_EXCEEDED]: 'DeadlineExceeded',
  [GrpcStatus.CANCELLED]: 'Cancelled',
  [GrpcStatus.UNIMPLEMENTED]: 'NotImplemented',
  [GrpcStatus.RESOURCE_EXHAUSTED]: 'ResourceExhausted',
};

/** The gRPC status code of a failed CRI call (e.g. `status.NOT_FOUND`), or undefined for other errors. */
export function criStatusCode(err: unknown): GrpcStatus | undefined {
  const cause = err instanceof KataError ? err.cause : err;
  const code = (cause as Partial<ServiceError> | undefined)?.code;
  return typeof code === 'number' ? code : undefined;
}

export interface CriClientOptions {
  /** Default deadline of every call (ms). */
  defaultTimeoutMs?: number;
}

/** A typed CRI client over a containerd socket (a unix socket path, or any gRPC target such as `unix:///x`). */
export class CriClient {
  private readonly client: Client;
  private readonly defaultTimeoutMs: number;

  constructor(address: string, opts: CriClientOptions = {}) {
    const target = address.startsWith('/') ? `unix://${address}` : address;
    this.client = new Client(target, credentials.createInsecure(), {
      'grpc.max_receive_message_length': 16 << 20,
    });
    this.defaultTimeoutMs = opts.defaultTimeoutMs ?? 60_000;
  }

  close(): void {
    this.client.close();
  }

  /** One unary call of `/runtime.v1.<service>/<method>`. */
  call<Req, Res>(
    service: 'RuntimeService' | 'ImageService',
    method: string,
    reqCodec: Codec<Req>,
    resCodec: Codec<Res>,
    request: Partial<Req>,
    opts: CallOptions = {},
  ): Promise<Res> {
    const full = criMessage(reqCodec, request);
    const longs = RESPONSE_LONGS[method];
    const deserialize = (buf: Buffer): Res => {
      if (!longs) return resCodec.decode(buf);
      const { rest, apply } = extractLongs(buf, longs);
      const msg = resCodec.decode(rest);
      apply(msg);
      return msg;
    };
    const timeoutMs = opts.timeoutMs ?? this.defaultTimeoutMs;
    const deadline = Date.now() + timeoutMs;
    return new Promise<Res>((resolve, reject) => {
      const call = this.client.makeUnaryRequest<Req, Res>(
        `/runtime.v1.${service}/${method}`,
        (m) => Buffer.from(reqCodec.encode(m).finish()),
        deserialize,
        full,
        new Metadata(),
        { deadline },
        (err, res) => {
          opts.signal?.removeEventListener('abort', onAbort);
          // DEADLINE_EXCEEDED is ours when the deadline has passed, else the server's (e.g. an ExecSync timeout).
          if (err) reject(toKataError(method, err, Date.now() >= deadline ? timeoutMs : undefined));
          else if (res === undefined) reject(new KataError('Internal', 'CRI_EMPTY', `CRI ${method}: empty response`));
          else resolve(res);
        },
      );
      const onAbort = () => call.cancel();
      if (opts.signal?.aborted) call.cancel();
      else opts.signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  private rt<Req, Res>(method: string, req: Codec<Req>, res: Codec<Res>) {
    return (request: Partial<Req> = {}, opts?: CallOptions) => this.call('RuntimeService', method, req, res, request, opts);
  }

  private img<Req, Res>(method: string, req: Codec<Req>, res: Codec<Res>) {
    return (request: Partial<Req> = {}, opts?: CallOptions) => this.call('ImageService', method, req, res, request, opts);
  }

  // RuntimeService
  readonly version = this.rt('Version', cri.VersionRequest, cri.VersionResponse);
  readonly status = this.rt('Status', cri.StatusRequest, cri.StatusResponse);
  readonly runPodSandbox = this.rt('RunPodSandbox', cri.RunPodSandboxRequest, cri.RunPodSandboxResponse);
  readonly stopPodSandbox = this.rt('StopPodSandbox', cri.StopPodSandboxRequest, cri.StopPodSandboxResponse);
  readonly removePodSandbox = this.rt('RemovePodSandbox', cri.RemovePodSandboxRequest, cri.RemovePodSandboxResponse);
  readonly podSandboxStatus = this.rt('PodSandboxStatus', cri.PodSandboxStatusRequest, cri.PodSandboxStatusResponse);
  readonly listPodSandbox = this.rt('ListPodSandbox', cri.ListPodSandboxRequest, cri.ListPodSandboxResponse);
  readonly createContainer = this.rt('CreateContainer', cri.CreateContainerRequest, cri.CreateContainerResponse);
  readonly startContainer = this.rt('StartContainer', cri.StartContainerRequest, cri.StartContainerResponse);
  readonly stopContainer = this.rt('StopContainer', cri.StopContainerRequest, cri.StopContainerResponse);
  readonly removeContainer = this.rt('RemoveContainer', cri.RemoveContainerRequest, cri.RemoveContainerResponse);
  readonly listContainers = this.rt('ListContainers', cri.ListContainersRequest, cri.ListContainersResponse);
  readonly containerStatus = this.rt('ContainerStatus', cri.ContainerStatusRequest, cri.ContainerStatusResponse);
  readonly updateContainerResources = this.rt(
    'UpdateContainerResources',
    cri.UpdateContainerResourcesRequest,
    cri.UpdateContainerResourcesResponse,
  );
  readonly execSync = this.rt('ExecSync', cri.ExecSyncRequest, cri.ExecSyncResponse);
  readonly containerStats = this.rt('ContainerStats', cri.ContainerStatsRequest, cri.ContainerStatsResponse);

  // ImageService
  readonly listImages = this.img('ListImages', cri.ListImagesRequest, cri.ListImagesResponse);
  readonly imageStatus = this.img('ImageStatus', cri.ImageStatusRequest, cri.ImageStatusResponse);

  /** Polls `Status` until both RuntimeReady and NetworkReady are true (the CNI config is loaded asynchronously). */
  async waitReady(timeoutMs = 30_000): Promise<cri.StatusResponse> {
    const until = Date.now() + timeoutMs;
    let last: cri.StatusResponse | undefined;
    let lastErr: unknown;
    while (Date.now() < until) {
      try {
        last = await this.status({}, { timeoutMs: Math.max(1000, until - Date.now()) });
        const conds = last.status?.conditions ?? [];
        const ok = (t: string) => conds.some((c) => c.type === t && c.status);
        if (ok('RuntimeReady') && ok('NetworkReady')) return last;
      } catch (err) {
        lastErr = err;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    const why = last ? JSON.stringify(last.status?.conditions) : String(lastErr);
    throw new KataError('DeadlineExceeded', 'CRI_NOT_READY', `CRI runtime not ready within ${timeoutMs} ms: ${why}`);
  }
}

function toKataError(method: string, err: ServiceError, clientTimeoutMs: number | undefined): KataError {
  const kind = KIND_BY_STATUS[err.code] ?? 'Internal';
  const name = GrpcStatus[err.code] ?? String(err.code);
  const detail =
    err.code === GrpcStatus.DEADLINE_EXCEEDED && clientTimeoutMs !== undefined
      ? `no answer within ${clientTimeoutMs} ms`
      : err.details || err.message;
  return new KataError(kind, `CRI_${name}`, `CRI ${method}: ${detail}`, { cause: err });
}
