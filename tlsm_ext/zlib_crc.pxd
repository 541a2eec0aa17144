# zlib's crc32 for the extensions, when setup.py found zlib.h and defined
# TLSM_HAVE_ZLIB. Without it, TLSM_CRC_FROM_ZLIB is false and
# tlsm_zlib_crc32 returns its crc argument unchanged: callers must then
# compute the checksum another way.

from libc.stdint cimport uint32_t

cdef extern from *:
    """
    #ifdef TLSM_HAVE_ZLIB
    #include <zlib.h>
    #define TLSM_CRC_FROM_ZLIB 1
    static uint32_t tlsm_zlib_crc32(uint32_t crc, const unsigned char *data,
                                    size_t length) {
        /* zlib's crc32 takes a uInt length, so feed it in 1 GiB pieces. */
        while (length > 0x40000000u) {
            crc = (uint32_t)crc32(crc, data, 0x40000000u);
            data += 0x40000000u;
            length -= 0x40000000u;
        }
        return (uint32_t)crc32(crc, data, (uInt)length);
    }
    #else
    #define TLSM_CRC_FROM_ZLIB 0
    static uint32_t tlsm_zlib_crc32(uint32_t crc, const unsigned char *data,
                                    size_t length) {
        (void)data;
        (void)length;
        return crc;
    }
    #endif
    """
    bint TLSM_CRC_FROM_ZLIB
    uint32_t tlsm_zlib_crc32(uint32_t crc, const unsigned char* data,
                             size_t length) nogil
