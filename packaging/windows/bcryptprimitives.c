/*
 * A stand-in for Windows' bcryptprimitives.dll, for Wine older than 8.13
 * (Debian 12 ships 8.0), which lacks it: Rust's standard library (1.78 and
 * later) imports ProcessPrng from it, so no Rust program loads without it
 * (rust-lang/rust#121337). Only the test environment needs this
 * (test-under-wine.sh copies it into its own WINEPREFIX); a real Windows
 * has the DLL. ProcessPrng fills the buffer from the system's generator,
 * RtlGenRandom (advapi32's SystemFunction036), and, like the real one,
 * always succeeds.
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk)) {
            return FALSE;
        }
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
