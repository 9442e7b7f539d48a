/* Sends one HTTP request over a Windows named pipe and prints the answer;
 * for test-under-wine.sh, since curl on Linux cannot open a Windows pipe
 * (tokend's HTTP API is on \\.\pipe\tokend-USER-http there).
 *
 *   pipe-http.exe PIPE METHOD PATH [HEADER...]
 *   pipe-http.exe \\.\pipe\tokend-alice-http GET /v1/status
 *   pipe-http.exe \\.\pipe\tokend-alice-http GET /v1/credentials/up/token "Accept: text/plain"
 *
 * Writes the request with "Connection: close", then prints everything the
 * server sends until it closes (status line, headers, body). Exit status 0
 * when an answer came, 1 when the pipe could not be opened or written.
 *
 * Build: x86_64-w64-mingw32-gcc -O2 -o pipe-http.exe pipe-http.c
 */
#include <windows.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: pipe-http.exe PIPE METHOD PATH [HEADER...]\n");
        return 2;
    }
    HANDLE pipe = INVALID_HANDLE_VALUE;
    for (int tries = 0; tries < 50; tries++) {
        pipe = CreateFileA(argv[1], GENERIC_READ | GENERIC_WRITE, 0, NULL, OPEN_EXISTING, 0, NULL);
        if (pipe != INVALID_HANDLE_VALUE) break;
        if (GetLastError() != ERROR_PIPE_BUSY) break;
        WaitNamedPipeA(argv[1], 200);
    }
    if (pipe == INVALID_HANDLE_VALUE) {
        fprintf(stderr, "pipe-http: cannot open %s: error %lu\n", argv[1], GetLastError());
        return 1;
    }

    char request[8192];
    int len = snprintf(request, sizeof request, "%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n",
                       argv[2], argv[3]);
    for (int i = 4; i < argc && len > 0 && (size_t)len < sizeof request; i++)
        len += snprintf(request + len, sizeof request - len, "%s\r\n", argv[i]);
    if (len <= 0 || (size_t)len + 2 >= sizeof request) {
        fprintf(stderr, "pipe-http: request too long\n");
        return 2;
    }
    len += snprintf(request + len, sizeof request - len, "\r\n");

    DWORD done;
    if (!WriteFile(pipe, request, (DWORD)len, &done, NULL) || done != (DWORD)len) {
        fprintf(stderr, "pipe-http: cannot write to %s: error %lu\n", argv[1], GetLastError());
        return 1;
    }
    char buf[4096];
    DWORD got;
    int any = 0;
    while (ReadFile(pipe, buf, sizeof buf, &got, NULL) && got > 0) {
        fwrite(buf, 1, got, stdout);
        any = 1;
    }
    fflush(stdout);
    CloseHandle(pipe);
    return any ? 0 : 1;
}
