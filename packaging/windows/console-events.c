/* Runs a program in a console of its own and sends it console control
 * events on request, as Windows does when a user presses Ctrl-Break; for
 * test-under-wine.sh, which cannot press
 * keys (Wine turns SIGINT into Ctrl-C, and no Unix signal into the others).
 *
 *   console-events.exe PROGRAM [ARGS...]
 *
 * Starts PROGRAM in a new process group on this process's console (made
 * here if there is none), its output on this process's stdout and stderr,
 * and prints "started PID". Then reads commands from stdin, one a line:
 *   break   GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, PID) ("break: error
 *           N" when it fails, as it does on Wine 8.0)
 * and prints "exit CODE" when PROGRAM ends (end of stdin: waits for it).
 * The console closing (CTRL_CLOSE_EVENT) has no command: no API sends it,
 * and Wine's console never does.
 *
 * Build: x86_64-w64-mingw32-gcc -O2 -o console-events.exe console-events.c
 */
#include <windows.h>
#include <stdio.h>
#include <string.h>

/* This process ignores the events it sends to the group it shares. */
static BOOL WINAPI ignore(DWORD event)
{
    (void)event;
    return TRUE;
}

int main(void)
{
    /* The command line after our own name, as Windows gave it. */
    wchar_t *cmdline = GetCommandLineW();
    int quoted = 0;
    while (*cmdline && (quoted || (*cmdline != L' ' && *cmdline != L'\t'))) {
        if (*cmdline == L'"') quoted = !quoted;
        cmdline++;
    }
    while (*cmdline == L' ' || *cmdline == L'\t') cmdline++;
    if (!*cmdline) {
        fprintf(stderr, "usage: console-events.exe PROGRAM [ARGS...]\n");
        return 2;
    }

    HANDLE in = GetStdHandle(STD_INPUT_HANDLE);
    HANDLE out = GetStdHandle(STD_OUTPUT_HANDLE);
    HANDLE err = GetStdHandle(STD_ERROR_HANDLE);
    /* Wine gives a program started from a Unix shell a console that
     * takes no control events: a real one instead. */
    FreeConsole();
    if (!AllocConsole()) {
        fprintf(stderr, "console-events: no console: error %lu\n", GetLastError());
        return 2;
    }
    SetConsoleCtrlHandler(ignore, TRUE);

    STARTUPINFOW si;
    PROCESS_INFORMATION pi;
    memset(&si, 0, sizeof si);
    si.cb = sizeof si;
    si.dwFlags = STARTF_USESTDHANDLES;
    si.hStdInput = INVALID_HANDLE_VALUE;
    si.hStdOutput = out;
    si.hStdError = err;
    SetHandleInformation(out, HANDLE_FLAG_INHERIT, HANDLE_FLAG_INHERIT);
    SetHandleInformation(err, HANDLE_FLAG_INHERIT, HANDLE_FLAG_INHERIT);
    if (!CreateProcessW(NULL, cmdline, NULL, NULL, TRUE, CREATE_NEW_PROCESS_GROUP,
                        NULL, NULL, &si, &pi)) {
        fprintf(stderr, "console-events: cannot start the program: error %lu\n", GetLastError());
        return 2;
    }
    printf("started %lu\n", pi.dwProcessId);
    fflush(stdout);

    char line[64];
    DWORD got;
    size_t len = 0;
    while (ReadFile(in, line + len, 1, &got, NULL) && got == 1) {
        if (line[len] != '\n' && len + 1 < sizeof line) {
            len++;
            continue;
        }
        line[len] = 0;
        len = 0;
        if (strncmp(line, "break", 5) == 0) {
            if (!GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, pi.dwProcessId))
                printf("break: error %lu\n", GetLastError());
        } else {
            printf("unknown command: %s\n", line);
        }
        fflush(stdout);
    }
    WaitForSingleObject(pi.hProcess, INFINITE);
    DWORD code = 1;
    GetExitCodeProcess(pi.hProcess, &code);
    printf("exit %lu\n", code);
    fflush(stdout);
    return 0;
}
