"""bench/load.py's HTTP/1.1 client reads every framing gunicorn may answer with, and keeps its connection alive."""

import asyncio

from bench.load import Connection, request_figures

ANSWERS = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: \"v1\"\r\n\r\nhello",
    b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nETag: \"v2\"\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
]


def test_the_client_reads_each_framing_on_one_kept_alive_connection_and_reopens_a_closed_one():
    async def scenario():
        connections = []
        requests = []

        async def serve(reader, writer):
            connections.append(writer)
            while len(requests) < len(ANSWERS):
                head = await reader.readuntil(b"\r\n\r\n")
                requests.append(head)
                writer.write(ANSWERS[len(requests) - 1])
                await writer.drain()
                if b"Connection: close" in ANSWERS[len(requests) - 1]:
                    break
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = Connection(port)
        answers = [await client.get("/a"), await client.get("/a", '"v1"'), await client.get("/a", '"v1"'),
                   await client.get("/b")]
        server.close()
        return answers, requests, len(connections), client.writer

    answers, requests, connections, writer = asyncio.run(scenario())
    assert [(status, headers.get("etag")) for status, headers, _ in answers] == [
        (200, '"v1"'), (304, '"v1"'), (200, '"v2"'), (400, None)]
    # Bytes received: the head and the body as framed (chunk sizes included).
    assert [size for _, _, size in answers] == [len(answer) for answer in ANSWERS]
    assert b'If-None-Match: "v1"' in requests[1] and b"If-None-Match" not in requests[0]
    assert connections == 1  # kept alive for all four
    assert writer is None  # closed after the server said Connection: close


def test_request_figures_tell_answers_shed_requests_and_errors_apart():
    records = [("metrics", 1.0, 0.010, 200, 900), ("metrics", 1.5, 0.002, 304, 100), ("metrics", 2.0, 0.004, 304, 100),
               ("metrics", 2.2, 0.001, 503, 200), ("metrics", 2.5, 2.5, "timeout", 0),
               ("sources", 1.2, 0.050, 200, 1100)]
    figures = request_figures(records, 2.0)
    assert figures["metrics"]["requests_per_second"] == 2.5
    assert figures["metrics"]["errors"] == 1 and figures["metrics"]["error_kinds"] == {"timeout": 1}
    assert figures["metrics"]["shed_503"] == 1  # answered, quickly: not an error
    assert figures["metrics"]["share_304"] == round(2 / 3, 3)
    assert figures["metrics"]["mean_200_bytes"] == 900 and figures["sources"]["mean_200_bytes"] == 1100
