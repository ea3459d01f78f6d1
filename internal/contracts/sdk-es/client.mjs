// A consumer of the generated SDK: creates a user, signs in and reads the
// user back with its access token over gRPC (HTTP/2,
// @connectrpc/connect-node), checks that the read without a token is
// UNAUTHENTICATED and that a bad request is refused with INVALID_ARGUMENT. The connection is mutual TLS with the
// files `trellis identity issue` writes.
// Usage: node client.mjs https://127.0.0.1:9001 data/identity/client/me
import { readFileSync } from "node:fs";
import { createClient, Code, ConnectError } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { UserService } from "./gen/trellis/user/v1/user_pb.js";
import { AuthService } from "./gen/trellis/user/v1/auth_pb.js";

const id = process.argv[3];
const transport = createGrpcTransport({
  baseUrl: process.argv[2],
  nodeOptions: {
    ca: readFileSync(`${id}/bundle.pem`),
    cert: readFileSync(`${id}/svid.pem`),
    key: readFileSync(`${id}/svid-key.pem`),
    minVersion: "TLSv1.3",
  },
});
const client = createClient(UserService, transport);
const auth = createClient(AuthService, transport);
const email = `sdk-es+${Date.now()}@example.com`;
const { user } = await client.createUser({ email, name: "SDK ES", password: "correct-horse" });
try {
  await client.getUser({ id: user.id });
  throw new Error("a read without a token was answered");
} catch (e) {
  const err = ConnectError.from(e);
  if (err.code !== Code.Unauthenticated) throw e;
}
const { accessToken } = await auth.signIn({ email, password: "correct-horse" });
const got = await client.getUser({ id: user.id }, { headers: { authorization: `Bearer ${accessToken}` } });
if (got.user.email !== email) throw new Error(`read back ${got.user.email}, want ${email}`);
try {
  await client.createUser({ email: "nope", name: "", password: "x" });
  throw new Error("an invalid user was accepted");
} catch (e) {
  const err = ConnectError.from(e);
  if (err.code !== Code.InvalidArgument) throw e;
}
console.log(`ok ${user.id} ${got.user.email}`);
