cdef class SummaryIndex:
    # The summary body (any bytes-like object), read in place.
    cdef const unsigned char[::1] _view
    # Start of each entry in _body, in body (timeline_id) order.
    cdef Py_ssize_t* _starts
    cdef Py_ssize_t _count
