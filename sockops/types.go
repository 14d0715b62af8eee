package sockops

// The C structs, as bpf2go generated them, under the names the rest of sockmesh uses.
type (
	SockTuple      = sockopsSockTuple
	SockKey        = sockopsSockKey
	SplicePeer     = sockopsSplicePeer
	OrigDstKey     = sockopsOrigdstKey
	OrigDstPending = sockopsOrigdstPending
)
