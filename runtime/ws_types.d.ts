// The part of the npm `ws` client the runtime uses. Declared here rather than taken from
// @types/ws, which pulls @types/node into every program that imports the runtime and changes
// global types (setTimeout's return type, node:assert's signatures) for the whole project.
export default class WebSocket {
  constructor(
    url: string,
    options?: { perMessageDeflate?: boolean; ca?: string; cert?: string; key?: string },
  );
}
