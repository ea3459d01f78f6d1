// A consumer of the generated SDK: creates a user and reads it back over
// gRPC (HTTP/2, @connectrpc/connect-node), then checks that a bad request
// is refused with INVALID_ARGUMENT. Usage: node client.mjs http://127.0.0.1:9001
import { createClient, Code, ConnectError } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { UserService } from "./gen/trellis/user/v1/user_pb.js";

const client = createClient(UserService, createGrpcTransport({ baseUrl: process.argv[2] }));
const email = `sdk-es+${Date.now()}@example.com`;
const { user } = await client.createUser({ email, name: "SDK ES", password: "correct-horse" });
const got = await client.getUser({ id: user.id });
if (got.user.email !== email) throw new Error(`read back ${got.user.email}, want ${email}`);
try {
  await client.createUser({ email: "nope", name: "", password: "x" });
  throw new Error("an invalid user was accepted");
} catch (e) {
  const err = ConnectError.from(e);
  if (err.code !== Code.InvalidArgument) throw e;
}
console.log(`ok ${user.id} ${got.user.email}`);
