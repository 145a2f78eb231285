// A Go reverse proxy with a request/response body tee, the core of what the KServe agent's payload logger does:
// net/http/httputil.ReverseProxy, standard library only. Each exchange's bodies are copied and handed to a
// bounded channel drained by one goroutine (dropped when full), as a monitoring sidecar written in Go would.
//
//	go build -o goproxy main.go && ./goproxy -upstream 127.0.0.1:9501 -listen 127.0.0.1:0
//
// Prints "PORT <n>" once listening. GOMAXPROCS is the machine's core count.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"runtime"
)

type requestBody struct{}

type exchange struct {
	request, response []byte
}

func main() {
	upstream := flag.String("upstream", "", "host:port of the model server")
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	flag.Parse()
	runtime.GOMAXPROCS(runtime.NumCPU())
	target, err := url.Parse("http://" + *upstream)
	if err != nil {
		log.Fatal(err)
	}
	captured := make(chan exchange, 10000)
	go func() {
		for range captured {
		}
	}()
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.Transport = &http.Transport{MaxIdleConns: 1024, MaxIdleConnsPerHost: 1024}
	proxy.ModifyResponse = func(response *http.Response) error {
		body, err := io.ReadAll(response.Body)
		if err != nil {
			return err
		}
		response.Body.Close()
		response.Body = io.NopCloser(bytes.NewReader(body))
		request, _ := response.Request.Context().Value(requestBody{}).([]byte)
		select {
		case captured <- exchange{request, body}:
		default:
		}
		return nil
	}
	handler := http.HandlerFunc(func(writer http.ResponseWriter, request *http.Request) {
		body, err := io.ReadAll(request.Body)
		if err != nil {
			http.Error(writer, err.Error(), http.StatusBadRequest)
			return
		}
		request.Body = io.NopCloser(bytes.NewReader(body))
		request = request.WithContext(context.WithValue(request.Context(), requestBody{}, body))
		proxy.ServeHTTP(writer, request)
	})
	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("PORT %d\n", listener.Addr().(*net.TCPAddr).Port)
	os.Stdout.Sync()
	log.Fatal(http.Serve(listener, handler))
}
