DKIM-Signature: a=rsa-sha256; bh=GCVQ4tC8W4mCDaljz9/OfEBgOyaaVcXNF/0SmsUTDew=;
 c=relaxed/relaxed; d=example.com;
 h=From:From:To:To:Cc:Cc:Subject:Subject:Date:Date:Message-ID:Message-ID:Reply-To:In-Reply-To:In-Reply-To:References:References:MIME-Version:Content-Type:Content-Transfer-Encoding:List-Id:List-Id:List-Unsubscribe:List-Unsubscribe:List-Unsubscribe-Post:List-Unsubscribe-Post;
 s=s; t=<T>; v=1; x=<X>;
 b=<B>
DKIM-Signature: a=ed25519-sha256; bh=GCVQ4tC8W4mCDaljz9/OfEBgOyaaVcXNF/0SmsUTDew=;
 c=relaxed/relaxed; d=example.com;
 h=From:From:To:To:Cc:Cc:Subject:Subject:Date:Date:Message-ID:Message-ID:Reply-To:In-Reply-To:In-Reply-To:References:References:MIME-Version:Content-Type:Content-Transfer-Encoding:List-Id:List-Id:List-Unsubscribe:List-Unsubscribe:List-Unsubscribe-Post:List-Unsubscribe-Post;
 s=e; t=<T>; v=1; x=<X>;
 b=<B>
