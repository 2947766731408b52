/** The shape of a ts-proto message codec (`Foo.encode(m).finish()`, `Foo.decode(bytes)`). */
export interface MessageCodec<T> {
  encode(message: T): { finish(): Uint8Array };
  decode(bytes: Uint8Array): T;
}
