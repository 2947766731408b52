import * as a from './gen/agent.js';
import { Empty } from './gen/google/protobuf/empty.js';
import * as h from './gen/health.js';
import * as t from './gen/types.js';

/**
 * The agent API as a table: ttrpc service and method names with their request and response codecs. The host
 * client and the guest server are both typed from this one table, so they cannot drift apart.
 */

export interface Codec<T> {
  encode(message: T): { finish(): Uint8Array };
  decode(input: Uint8Array): T;
}

export interface MethodSpec<Req, Res> {
  service: string;
  request: Codec<Req>;
  response: Codec<Res>;
}

export const AGENT_SERVICE = 'grpc.AgentService';
export const HEALTH_SERVICE = 'grpc.Health';

const m = <Req, Res>(service: string, request: Codec<Req>, response: Codec<Res>): MethodSpec<Req, Res> => ({
  service,
  request,
  response,
});
const agent = <Req, Res>(req: Codec<Req>, res: Codec<Res>) => m(AGENT_SERVICE, req, res);

export const agentApi = {
  Check: m(HEALTH_SERVICE, h.CheckRequest, h.HealthCheckResponse),
  Version: m(HEALTH_SERVICE, h.CheckRequest, h.VersionCheckResponse),
  CreateSandbox: agent(a.CreateSandboxRequest, Empty),
  DestroySandbox: agent(a.DestroySandboxRequest, Empty),
  CreateContainer: agent(a.CreateContainerRequest, Empty),
  StartContainer: agent(a.StartContainerRequest, Empty),
  RemoveContainer: agent(a.RemoveContainerRequest, Empty),
  ExecProcess: agent(a.ExecProcessRequest, Empty),
  SignalProcess: agent(a.SignalProcessRequest, Empty),
  WaitProcess: agent(a.WaitProcessRequest, a.WaitProcessResponse),
  UpdateContainer: agent(a.UpdateContainerRequest, Empty),
  StatsContainer: agent(a.StatsContainerRequest, a.StatsContainerResponse),
  PauseContainer: agent(a.PauseContainerRequest, Empty),
  ResumeContainer: agent(a.ResumeContainerRequest, Empty),
  WriteStdin: agent(a.WriteStreamRequest, a.WriteStreamResponse),
  ReadStdout: agent(a.ReadStreamRequest, a.ReadStreamResponse),
  ReadStderr: agent(a.ReadStreamRequest, a.ReadStreamResponse),
  CloseStdin: agent(a.CloseStdinRequest, Empty),
  TtyWinResize: agent(a.TtyWinResizeRequest, Empty),
  UpdateInterface: agent(a.UpdateInterfaceRequest, t.Interface),
  UpdateRoutes: agent(a.UpdateRoutesRequest, a.Routes),
  ListInterfaces: agent(a.ListInterfacesRequest, a.Interfaces),
  ListRoutes: agent(a.ListRoutesRequest, a.Routes),
  AddARPNeighbors: agent(a.AddARPNeighborsRequest, Empty),
  GetMetrics: agent(a.GetMetricsRequest, a.Metrics),
  OnlineCPUMem: agent(a.OnlineCPUMemRequest, Empty),
  ReseedRandomDev: agent(a.ReseedRandomDevRequest, Empty),
  GetGuestDetails: agent(a.GuestDetailsRequest, a.GuestDetailsResponse),
  SetGuestDateTime: agent(a.SetGuestDateTimeRequest, Empty),
  CopyFile: agent(a.CopyFileRequest, Empty),
  GetOOMEvent: agent(a.GetOOMEventRequest, a.OOMEvent),
} as const;

export type AgentApi = typeof agentApi;
export type AgentMethod = keyof AgentApi;
export type RequestOf<K extends AgentMethod> = AgentApi[K] extends MethodSpec<infer Req, unknown> ? Req : never;
export type ResponseOf<K extends AgentMethod> = AgentApi[K] extends MethodSpec<unknown, infer Res> ? Res : never;

/** Guest-side implementation: every method is optional; missing ones answer Unimplemented. */
export type AgentHandlers = {
  [K in AgentMethod]?: (req: RequestOf<K>, ctx: { signal: AbortSignal }) => Promise<ResponseOf<K>>;
};

/** Version strings reported by Health.Version. */
export const AGENT_VERSION = '0.1.0';
export const AGENT_PROTOCOL_VERSION = 'kata-ts-ttrpc-1';
